import pytest

from tokeff.core.errors import TokeffError
from tokeff.core.textio import read_text, trim_partial_char


def test_trim_partial_char_drops_only_a_split_character():
    text = "aé€😀".encode()
    assert trim_partial_char(text) == text
    for cut in range(1, len(text) + 1):
        trimmed = trim_partial_char(text[:cut])
        assert text.startswith(trimmed)
        trimmed.decode("utf-8")  # always valid
        assert len(text[:cut]) - len(trimmed) <= 3


def test_read_text_max_bytes_cuts_at_character_boundary(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab€cd", encoding="utf-8")
    assert read_text(path, max_bytes=3) == "ab"
    assert read_text(path, max_bytes=5) == "ab€"


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"  \n", "empty"), (b"ok \xff\xfe", "UTF-8")],
)
def test_read_text_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(TokeffError, match=message):
        read_text(path)


def test_read_text_missing_file(tmp_path):
    with pytest.raises(TokeffError, match="no such file"):
        read_text(tmp_path / "missing.txt")
