"""Text to token ids with the `tokenizers` library alone, for jobs that only encode (watermark detection).

transformers' AutoTokenizer takes seconds to import and load (it imports torch), paid again in every
Ray actor of a corpus job; `tokenizers.Tokenizer` reads the same tokenizer.json in a fraction of a
second. transformers' fast tokenizers encode through that same Tokenizer, so the ids are the same
(tests compare both on the built-in models and on trained tokenizers). A folder without a
tokenizer.json, or a tokenizer that needs remote code, falls back to transformers.
"""

from __future__ import annotations

from pathlib import Path

from tokeff.core.errors import TokeffError
from tokeff.core.resolve import first_line, tokenizer_folder


class Encoder:
    """The slice of transformers' tokenizer interface that encoding needs: call, len, get_vocab."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception on a malformed file
            raise TokeffError(f"{path}: cannot load the tokenizer ({first_line(exc)})") from None

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [encoding.ids for encoding in encodings]}

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab(with_added_tokens=True)


def load_encoder(spec: str, trust_remote_code: bool = False):
    """An encoder for a model or tokenizer argument: `Encoder` where a tokenizer.json allows, else transformers'."""
    folder = tokenizer_folder(spec)
    if trust_remote_code or not (folder / "tokenizer.json").is_file():
        from tokeff.core.models import load_tokenizer

        return load_tokenizer(spec, trust_remote_code=trust_remote_code, folder=folder)
    return Encoder(folder / "tokenizer.json")
