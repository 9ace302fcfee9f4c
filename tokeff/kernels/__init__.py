"""Inner loops. Each kernel has a plain torch reference (what the tests compare against), a Numba
version for the CPU and, where a GPU helps, a Triton version; callers pick by device."""
