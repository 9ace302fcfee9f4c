"""Reading user text files with the checks every command needs (exists, non-empty, valid UTF-8)."""

from pathlib import Path

from tokeff.core import interrupt
from tokeff.core.errors import TokeffError


def read_text(path: Path | str, max_bytes: int | None = None) -> str:
    """The file's text, cut to at most `max_bytes` UTF-8 bytes at a character boundary."""
    path = Path(path)
    if not path.is_file():
        raise TokeffError(f"{path}: no such file")
    data = path.read_bytes()
    if max_bytes is not None:
        if max_bytes <= 0:
            raise TokeffError(f"--max-bytes must be positive, got {max_bytes}")
        data = trim_partial_char(data[:max_bytes])
    if not data.strip():
        raise TokeffError(f"{path}: file is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokeffError(f"{path}: not valid UTF-8 (byte {exc.start})") from None


def trim_partial_char(data: bytes) -> bytes:
    """Drop a UTF-8 character that a byte cut split in two (its lead byte and 0-2 continuation bytes)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:  # ASCII: nothing split
            return data
        if byte >= 0xC0:  # lead byte: is its sequence complete?
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if length <= back else data[:-back]
    return data


def write_text_atomic(path: Path | str, text: str, force: bool = False) -> Path:
    """Write a result file (JSONL, CSV) via a temporary sibling and a rename: never half-written."""
    import os
    import tempfile

    path = Path(path)
    if path.exists() and not force:
        raise TokeffError(f"{path} already exists (use --force to replace it)")
    if path.is_dir():
        raise TokeffError(f"{path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    temporary = interrupt.track(Path(name))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        interrupt.publish(temporary, lambda: os.replace(temporary, path))
    except BaseException:
        temporary.unlink(missing_ok=True)
        interrupt.forget(temporary)
        raise
    return path
