"""Where tokeff keeps its cache (converted models, downloaded packages' GGUFs)."""

import os
from pathlib import Path


def tokeff_home() -> Path:
    """`TOKEFF_HOME`, else `$XDG_CACHE_HOME/tokeff`, else `~/.cache/tokeff`."""
    explicit = os.environ.get("TOKEFF_HOME")
    if explicit:
        return Path(explicit).expanduser()
    cache_root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_root) / "tokeff"
