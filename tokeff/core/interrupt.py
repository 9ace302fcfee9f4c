"""Ctrl-C that takes effect at once, even inside a long native call, and leaves no partial output.

Python runs signal handlers in the main thread between bytecodes, so while that thread sits in a
Rust or Numba call (tokenizer training, a kernel) Ctrl-C waits until the call returns. Commands
therefore run in a worker thread while the main thread only waits, which a signal interrupts at
once. A worker thread cannot be stopped, so on Ctrl-C the main thread removes the temporary outputs
tracked here and the process ends without unwinding the worker.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_partials: set[Path] = set()
# Held while a finished output is moved into place and by the Ctrl-C clean-up, so the clean-up never
# sees half a move, and no move happens after it.
_lock = threading.Lock()


def track(path: Path) -> Path:
    """Register a temporary output (file or folder) to be removed if the command is interrupted."""
    with _lock:
        _partials.add(path)
    return path


def forget(path: Path) -> None:
    """The temporary output is gone (removed after a failure)."""
    with _lock:
        _partials.discard(path)


def publish(path: Path, move: Callable[[], None]) -> None:
    """Run `move`, which puts the temporary output `path` in its final place, safe from the clean-up."""
    with _lock:
        move()
        _partials.discard(path)


def run_in_worker(function: Callable[[], T]) -> T:
    """`function()` in a worker thread; its exception (SystemExit included) is raised here.

    A KeyboardInterrupt raised while waiting leaves the worker running: call `remove_partials`
    and end the process with `os._exit`.
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # re-raised in the main thread, which decides the exit code
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="tokeff-command", daemon=True)
    worker.start()
    worker.join()  # a lock wait, which Ctrl-C interrupts
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")  # type: ignore[return-value]


def remove_partials() -> None:
    """Remove every tracked temporary output; call from the main thread after Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    _lock.acquire(timeout=30)  # a move under way finishes first; none starts afterwards
    for path in list(_partials):
        for _ in range(3):  # the worker may still add a file while the folder is removed
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            if not path.exists():
                break
