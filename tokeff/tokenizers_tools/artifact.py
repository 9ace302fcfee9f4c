"""Tokenizer artifacts: a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json) with a manifest.

Stock `tokenizers.Tokenizer.from_file` and `transformers.AutoTokenizer.from_pretrained` load it;
`tokeff verify` also checks that it loads, has the vocabulary the manifest records and encodes
text losslessly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tokeff.core.artifacts import ArtifactWriter, Manifest
from tokeff.tokenizers_tools.training import CHUNK_SEPARATORS, DEFAULT_SPECIAL_TOKENS, TrainedTokenizer, train_bpe

KIND = "tokenizer"
# Letters, digits, punctuation, runs of spaces and newlines, non-ASCII: what a round trip must survive.
_PROBE = "The year 1999, my friend -- don't stop!\n\n  Indented\tline: caf\u00e9 \u4e2d\u6587 \U0001f600 12345.\n"


def write_tokenizer(
    trained: TrainedTokenizer,
    out: Path,
    *,
    force: bool,
    texts: list[Path],
    parameters: dict[str, Any],
    metrics: dict[str, Any],
) -> Manifest:
    """Save `trained` as a tokenizer artifact at `out`; the first special token is BOS and EOS."""
    from transformers import PreTrainedTokenizerFast

    specials = [token.content for token in trained.tokenizer.get_added_tokens_decoder().values() if token.special]
    hf = PreTrainedTokenizerFast(
        tokenizer_object=trained.tokenizer,
        bos_token=specials[0] if specials else None,
        eos_token=specials[0] if specials else None,
    )
    with ArtifactWriter(out, kind=KIND, force=force, parameters=parameters) as writer:
        for text in texts:
            writer.add_input("text", str(text), text)
        writer.metrics.update(metrics)
        hf.save_pretrained(writer.path)
    return writer.manifest



def train_tokenizer_artifact(
    texts: list[Path], vocab: int, out: Path, *, supertokens: bool = False, stage1_merges: int | None = None,
    special_tokens: list[str] | None = None, min_frequency: int = 2, max_bytes: int | None = None, force: bool = False,
) -> Manifest:
    """Train a byte-level BPE tokenizer on the files and write it as an artifact with its settings and
    measured compression (bytes per token on the training text) in the manifest."""
    from tokeff.core.textio import read_text

    corpus = [read_text(path, max_bytes) for path in texts]
    specials = special_tokens or list(DEFAULT_SPECIAL_TOKENS)
    started = time.perf_counter()
    trained = train_bpe(
        corpus, vocab, supertokens=supertokens, stage1_merges=stage1_merges, special_tokens=specials,
        min_frequency=min_frequency,
    )
    seconds = time.perf_counter() - started
    n_bytes = sum(len(piece.encode("utf-8")) for piece in corpus)
    n_tokens = sum(len(encoding.ids) for encoding in trained.tokenizer.encode_batch(corpus, add_special_tokens=False))
    metrics = {"train_bytes": n_bytes, "train_bytes_per_token": n_bytes / n_tokens, "merges": trained.merges,
               "seconds": seconds}
    parameters = {
        "vocab_size": trained.vocab_size, "supertokens": supertokens, "stage1_merges": stage1_merges,
        "stage1_vocab_size": trained.stage1_vocab, "special_tokens": specials, "min_frequency": min_frequency,
        "max_bytes": max_bytes, "chunk_separators": CHUNK_SEPARATORS,
    }
    return write_tokenizer(trained, out, force=force, texts=list(texts), parameters=parameters, metrics=metrics)

def check_tokenizer_artifact(path: Path, manifest: Manifest) -> list[str]:
    """Problems with a tokenizer artifact beyond file hashes (see the module docstring)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    except Exception as exc:  # the Rust loader raises plain Exceptions on malformed files
        return [f"tokenizer.json does not load with stock tokenizers ({str(exc).splitlines()[0][:200]})"]
    problems = []
    expected = manifest.parameters.get("vocab_size")
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if expected is not None and size != expected:
        problems.append(f"tokenizer has {size} tokens, the manifest says {expected}")
    if tokenizer.decode(tokenizer.encode(_PROBE, add_special_tokens=False).ids, skip_special_tokens=False) != _PROBE:
        problems.append("tokenizer does not encode text losslessly")
    try:
        json.loads((Path(path) / "tokenizer_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"tokenizer_config.json is missing or invalid ({exc})")
    return problems
