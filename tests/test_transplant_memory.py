"""What rebuilding a bf16 embedding holds: its output and bounded temporaries, never a float32 copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# In a fresh process, so that the peak RSS is the rebuild's own: a 65,536 x 2048 bf16 matrix
# (256 MiB) gets 8,192 copied and 8,192 estimated rows (64 MiB out). A whole float32 copy of it
# (what `matrix.mean(0, dtype=torch.float32)` makes on the CPU) would add 512 MiB.
_SCRIPT = """
import resource
from types import SimpleNamespace
import numpy as np, torch
from tokeff.surgery.transplant.estimators import Combination
from tokeff.surgery.transplant.pipeline import _rebuild

rows, hidden, half = 65536, 2048, 8192
matrix = torch.empty(rows, hidden, dtype=torch.bfloat16)
for start in range(0, rows, 4096):
    matrix[start : start + 4096] = torch.randn(4096, hidden)
base_row = np.full(2 * half, -1, dtype=np.int64)
base_row[:half] = np.arange(half)
match = SimpleNamespace(base_row=base_row, estimated_ids=np.arange(half, 2 * half))
generator = torch.Generator().manual_seed(0)
combination = Combination(torch.randint(0, half, (half, 16), generator=generator), torch.rand(half, 16, generator=generator),
                          torch.full((half,), 0.5))
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
out = _rebuild(matrix, match, combination, 2 * half)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big pytest process starts at its size
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
expected = combination.apply(matrix, matrix.float().mean(0))[:4].to(torch.bfloat16)
assert torch.equal(out[:half], matrix[:half]) and torch.allclose(out[half : half + 4].float(), expected.float(), atol=1e-2)
print(peak - before)
"""


def test_rebuild_peak_rss_stays_under_the_matrix_size():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    grown = float(result.stdout.split()[-1])
    # Output (64 MiB) plus temporaries bounded by _REBUILD_FLOATS; less than the bf16 matrix itself.
    assert grown < 256, f"rebuilding a 256 MiB bf16 matrix raised peak RSS by {grown:.0f} MiB"
