"""Which donor tokens the base model already knows: matching by canonical bytes, special tokens by role.

The output model speaks the donor's vocabulary, so every donor token id needs a row. A donor token
whose canonical bytes equal a base token's is *shared* and keeps that base row exactly (raw strings
would miss most of the overlap between byte-level BPE and SentencePiece vocabularies). Special
tokens have no bytes; they are matched by `--map`, then by identical text, then by role (bos, eos,
pad, unk, mask, chat turn start/end). Everything else is *new* (has bytes the base lacks as one
token) or *unreachable* (no bytes and no match) and gets an estimated row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from tokeff.core.errors import TokeffError
from tokeff.tokenizers_tools.canonical import VocabBytes, vocab_bytes

# Chat markers by role, for tokenizers whose chat template is missing (GGUF conversions often drop it).
_TURN_START_NAMES = ("<|im_start|>", "<start_of_turn>", "<|start_header_id|>", "<|start|>")
_TURN_END_NAMES = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|eot|>")
# When one donor token holds several roles, the first listed decides its base row: ending
# generation correctly matters more than the rest.
ROLES = ("eos", "turn_end", "bos", "turn_start", "pad", "unk", "mask")
_MARK = "\u2063tokeff-probe\u2063"


@dataclass
class VocabMatch:
    """Donor token id -> base row, and what is left to estimate."""

    donor_rows: int  # rows the donor tokenizer needs (its largest id + 1)
    base_row: np.ndarray  # int64, per donor id: the base row it copies, or -1
    new_ids: np.ndarray  # donor ids with canonical bytes the base vocabulary lacks as one token
    unreachable_ids: np.ndarray  # donor ids without bytes (unmatched specials, unmappable pieces)
    donor_vocab: VocabBytes
    base_vocab: VocabBytes
    special_matches: dict[int, tuple[int, str]] = field(default_factory=dict)  # donor id -> (base id, how)

    @property
    def shared_ids(self) -> np.ndarray:
        """Donor ids matched by canonical bytes (the anchors every estimator builds on)."""
        return np.array(
            [i for i in np.flatnonzero(self.base_row >= 0) if i not in self.special_matches], dtype=np.int64
        )

    @property
    def estimated_ids(self) -> np.ndarray:
        return np.sort(np.concatenate([self.new_ids, self.unreachable_ids])).astype(np.int64)

    def counts(self) -> dict[str, object]:
        hows = Counter(how for _, how in self.special_matches.values())
        return {
            "donor_tokens": self.donor_rows,
            "shared": int(len(self.shared_ids)),
            "new": int(len(self.new_ids)),
            "unreachable": int(len(self.unreachable_ids)),
            "special_matched": dict(sorted(hows.items())),
        }


def parse_maps(items: list[str]) -> dict[str, str]:
    """`--map SRC=DST` items as {donor token: base token}; the split is at the last '='."""
    maps = {}
    for item in items:
        src, sep, dst = item.rpartition("=")
        if not sep or not src or not dst:
            raise TokeffError(f"--map {item!r}: expected DONOR_TOKEN=BASE_TOKEN")
        maps[src] = dst
    return maps


def match_vocabularies(
    base: PreTrainedTokenizerBase, donor: PreTrainedTokenizerBase, maps: dict[str, str] | None = None
) -> VocabMatch:
    base_vocab, donor_vocab = vocab_bytes(base), vocab_bytes(donor)
    rows = len(donor_vocab)
    base_row = np.full(rows, -1, dtype=np.int64)
    for donor_id, data in enumerate(donor_vocab.token_bytes):
        if data:
            base_id = base_vocab.id_of(data)
            if base_id is not None:
                base_row[donor_id] = base_id
    specials = _match_specials(base, donor, donor_vocab, maps or {})
    for donor_id, (base_id, _) in specials.items():
        base_row[donor_id] = base_id
    unmatched = base_row < 0
    has_bytes = np.array([bool(data) for data in donor_vocab.token_bytes])
    return VocabMatch(
        donor_rows=rows,
        base_row=base_row,
        new_ids=np.flatnonzero(unmatched & has_bytes),
        unreachable_ids=np.flatnonzero(unmatched & ~has_bytes),
        donor_vocab=donor_vocab,
        base_vocab=base_vocab,
        special_matches=specials,
    )


def same_vocabulary(base: PreTrainedTokenizerBase, donor: PreTrainedTokenizerBase) -> bool:
    return base.get_vocab() == donor.get_vocab()


def special_roles(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Role -> token id: the tokenizer's declared specials plus chat turn markers."""
    roles = {
        role: getattr(tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "pad", "unk", "mask")
    }
    roles.update(_chat_roles(tokenizer))
    return {role: token_id for role, token_id in roles.items() if isinstance(token_id, int)}


def _chat_roles(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Turn start/end markers: read off the rendered chat template, else known names."""
    vocab = tokenizer.get_vocab()
    found: dict[str, int] = {}
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False)
        except Exception:  # templates are arbitrary Jinja; a failing one just falls back to names
            text = ""
        at = text.find(_MARK)
        if at >= 0:
            specials = [str(token) for token in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()]
            hits = sorted((pos, name) for name in specials for pos in _positions(text, name))
            user_at = text.rfind("user", 0, at)
            before = [name for pos, name in hits if pos + len(name) <= user_at]
            after = [name for pos, name in hits if pos >= at + len(_MARK)]
            if before:
                found["turn_start"] = vocab[before[-1]]
            if after:
                found["turn_end"] = vocab[after[0]]
    for role, names in (("turn_start", _TURN_START_NAMES), ("turn_end", _TURN_END_NAMES)):
        if role not in found:
            match = next((vocab[name] for name in names if name in vocab), None)
            if match is not None:
                found[role] = match
    return found


def _positions(text: str, needle: str) -> list[int]:
    positions, start = [], text.find(needle)
    while start >= 0:
        positions.append(start)
        start = text.find(needle, start + 1)
    return positions


def _match_specials(
    base: PreTrainedTokenizerBase, donor: PreTrainedTokenizerBase, donor_vocab: VocabBytes, maps: dict[str, str]
) -> dict[int, tuple[int, str]]:
    base_ids, donor_ids = base.get_vocab(), donor.get_vocab()
    matches: dict[int, tuple[int, str]] = {}
    for src, dst in maps.items():
        if src not in donor_ids:
            raise TokeffError(f"--map {src}={dst}: {src!r} is not a token of the donor tokenizer")
        if dst not in base_ids:
            raise TokeffError(f"--map {src}={dst}: {dst!r} is not a token of the base tokenizer")
        matches[donor_ids[src]] = (base_ids[dst], "map")
    id_to_donor_token = {token_id: token for token, token_id in donor_ids.items()}
    base_roles, donor_roles = special_roles(base), special_roles(donor)
    base_special_ids = _base_specials(base)
    role_of: dict[int, str] = {}
    for role in ROLES:
        if role in donor_roles:
            role_of.setdefault(donor_roles[role], role)
    for donor_id in sorted(donor_vocab.special_ids | set(role_of)):
        if donor_id in matches or donor_vocab.token_bytes[donor_id]:
            continue
        name = id_to_donor_token.get(donor_id)
        if name in base_ids and base_ids[name] in base_special_ids:
            matches[donor_id] = (base_ids[name], "name")
        elif donor_id in role_of and role_of[donor_id] in base_roles:
            matches[donor_id] = (base_roles[role_of[donor_id]], f"role:{role_of[donor_id]}")
    return matches


def _base_specials(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    return {token_id for token_id, token in tokenizer.backend_tokenizer.get_added_tokens_decoder().items() if token.special}
