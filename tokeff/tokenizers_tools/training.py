"""Training byte-level BPE tokenizers, plain or with supertokens (multi-word tokens), with stock `tokenizers`.

Supertokens follow SuperBPE's pretokenization curriculum: stage 1 learns merges within words
(GPT-2 style whitespace pre-tokenization); stage 2 resumes from those merges with the whitespace
boundary lifted, so tokens may span several words, while digit groups, punctuation and newlines
still split the text (a token never bridges a sentence mark or a line).

The stock trainer has no "resume from these merges" option, so stage 2 runs it on an alphabet of
stage-1 tokens: the corpus is cut into stage-2 chunks, each chunk is encoded with the stage-1
merges (exactly what the final tokenizer does first, since every stage-1 merge ranks before every
stage-2 merge and no stage-2 token appears in a stage-1 merge), and every stage-1 token id becomes
one private character. The trainer's merges over those characters are stage 2's merges; spelled
back in byte-level strings and appended to stage 1's, they give one ordinary BPE tokenizer.json.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tokeff.core import console
from tokeff.core.errors import TokeffError

# What still splits text once whitespace no longer does: digit groups of up to three (with a
# leading space, as GPT-2 attaches it), runs of punctuation (apostrophes excepted, so "don't" and
# "'s" stay inside words) and newline runs with the spaces before them.
CHUNK_SEPARATORS = r" ?\p{N}{1,3}| ?[^\s\p{L}\p{N}']+|\s*[\r\n]+"
BYTE_ALPHABET = 256
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>",)
# Default share of the merges learned within words before stage 2: the runs in docs/tokenizers.md
# put stage 1 at about 3/4 of the vocabulary (6,000 of 8,192 and 12,000 of 16,384), near SuperBPE's
# best transition points (80-90% of a 200k vocabulary).
STAGE1_FRACTION = 0.75
# Stage-1 token id i is written as this character plus i in stage 2 (the supplementary planes
# hold over a million code points and no surrogates).
_SYMBOL_BASE = 0x10000


@dataclass
class TrainedTokenizer:
    tokenizer: Tokenizer
    stage1_vocab: int | None  # vocabulary size at the transition to stage 2 (None: plain BPE)
    merges: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def chunk_pre_tokenizer(within_words: bool) -> pre_tokenizers.PreTokenizer:
    """Stage-2 chunks; with `within_words`, further split into GPT-2 words (stage 1, plain BPE)."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CHUNK_SEPARATORS), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=within_words),
        ]
    )


def train_bpe(
    texts: Sequence[str],
    vocab_size: int,
    *,
    supertokens: bool = False,
    stage1_merges: int | None = None,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
) -> TrainedTokenizer:
    """A byte-level BPE of `vocab_size` tokens (specials included); with `supertokens`, two stages.

    `stage1_merges` defaults to STAGE1_FRACTION of the merges (`vocab_size` less the byte alphabet and specials).
    """
    specials = list(dict.fromkeys(special_tokens))
    floor = BYTE_ALPHABET + len(specials)
    if vocab_size <= floor:
        raise TokeffError(
            f"--vocab {vocab_size} leaves no room for merges: the byte alphabet and special tokens already take {floor}"
        )
    if min_frequency < 1:
        raise TokeffError(f"--min-frequency must be >= 1, got {min_frequency}")
    if supertokens:
        if stage1_merges is None:
            stage1_merges = max(1, int((vocab_size - floor) * STAGE1_FRACTION))
        if not 0 < stage1_merges < vocab_size - floor:
            raise TokeffError(f"--stage1 must be in 1..{vocab_size - floor - 1} for --vocab {vocab_size}, got {stage1_merges}")
    elif stage1_merges is not None:
        raise TokeffError("--stage1 applies only with --supertokens")

    target1 = floor + stage1_merges if supertokens else vocab_size
    console.info(f"stage 1: BPE within words up to {target1:,} tokens")
    tokenizer = _byte_level_tokenizer(within_words=True)
    trainer = trainers.BpeTrainer(
        vocab_size=target1,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_pieces(texts), trainer)
    _check_reached(tokenizer.get_vocab_size(), target1, "stage 1 (within words)", min_frequency)
    if not supertokens:
        return TrainedTokenizer(tokenizer, stage1_vocab=None, merges=_merge_count(tokenizer))
    stage1_vocab = tokenizer.get_vocab_size()
    tokenizer = _stage2(tokenizer, texts, vocab_size, min_frequency)
    return TrainedTokenizer(tokenizer, stage1_vocab=stage1_vocab, merges=_merge_count(tokenizer))


def _stage2(stage1: Tokenizer, texts: Sequence[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Resume BPE from stage 1's merges with the whitespace boundary lifted (see the module docstring)."""
    model = json.loads(stage1.to_str())["model"]
    stage1_vocab: dict[str, int] = model["vocab"]  # specials included, at their ids
    stage1_merges = [tuple(pair) for pair in model["merges"]]
    wanted = vocab_size - len(stage1_vocab)
    console.info(f"stage 2: BPE across words from {len(stage1_vocab):,} to {vocab_size:,} tokens")

    chunker = _byte_level_tokenizer(within_words=False, vocab=stage1_vocab, merges=stage1_merges)
    chunk_counts = Counter(_stage1_chunks(chunker, texts))
    alphabet = {symbol for chunk in chunk_counts for symbol in chunk}
    id_to_piece = {token_id: piece for piece, token_id in stage1_vocab.items()}
    # A stage-2 merge can rebuild a string stage 1 already has (another merge path to the same
    # bytes): it adds no token, so ask for a margin of extra merges and stop at the target.
    extra = max(64, wanted // 20)
    while True:
        trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + wanted + extra, min_frequency=min_frequency, show_progress=False)
        symbols = Tokenizer(models.BPE())
        symbols.train_from_iterator(_repeat(chunk_counts), trainer)
        learned = json.loads(symbols.to_str())["model"]["merges"]
        vocab, merges = _extend(stage1_vocab, stage1_merges, learned, id_to_piece, vocab_size)
        exhausted = len(learned) < wanted + extra
        if len(vocab) >= vocab_size or exhausted:
            break
        extra *= 4  # rare: duplicates used up the margin
    _check_reached(len(vocab), vocab_size, "stage 2 (across words)", min_frequency)
    final = _byte_level_tokenizer(within_words=False, vocab=vocab, merges=merges)
    final.add_special_tokens(list(stage1.get_added_tokens_decoder().values()))
    return final


def _extend(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    learned: Iterable[Sequence[str]],
    id_to_piece: dict[int, str],
    vocab_size: int,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Stage-2 merges (over stage-1 symbols) spelled in byte-level pieces, appended until `vocab_size` tokens."""

    def spell(symbols: str) -> str:
        return "".join(id_to_piece[ord(symbol) - _SYMBOL_BASE] for symbol in symbols)

    vocab, merges = dict(vocab), list(merges)
    for left, right in learned:
        if len(vocab) >= vocab_size:
            break
        pair = (spell(left), spell(right))
        merges.append(pair)
        vocab.setdefault(pair[0] + pair[1], len(vocab))
    return vocab, merges


def _stage1_chunks(chunker: Tokenizer, texts: Sequence[str]) -> Iterator[str]:
    """Every stage-2 chunk of the corpus as a string of stage-1 token symbols."""
    for encoding in chunker.encode_batch(list(_pieces(texts)), add_special_tokens=False):
        chunk: list[str] = []
        previous = None
        for token_id, word in zip(encoding.ids, encoding.word_ids):
            if word != previous and chunk:
                yield "".join(chunk)
                chunk = []
            chunk.append(chr(_SYMBOL_BASE + token_id))
            previous = word
        if chunk:
            yield "".join(chunk)


def _repeat(counts: Counter[str]) -> Iterator[str]:
    for chunk, count in counts.items():
        for _ in range(count):
            yield chunk


def _byte_level_tokenizer(
    within_words: bool, vocab: dict[str, int] | None = None, merges: list[tuple[str, str]] | None = None
) -> Tokenizer:
    bpe = models.BPE() if vocab is None else models.BPE(vocab=vocab, merges=merges or [])
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = chunk_pre_tokenizer(within_words)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _pieces(texts: Iterable[str], size: int = 1 << 16) -> Iterator[str]:
    """Texts cut into pieces of about `size` characters, only after a newline that ends a whitespace run,
    so no pre-token (and no newline run) is split by the cut."""
    for text in texts:
        start = 0
        while start < len(text):
            cut = len(text) if start + size >= len(text) else _cut_point(text, start + size)
            yield text[start:cut]
            start = cut


def _cut_point(text: str, at: int) -> int:
    while at < len(text) and not (text[at - 1] == "\n" and not text[at].isspace()):
        at += 1
    return at


def _merge_count(tokenizer: Tokenizer) -> int:
    return len(json.loads(tokenizer.to_str())["model"]["merges"])


def _check_reached(size: int, target: int, stage: str, min_frequency: int) -> None:
    if size < target:
        raise TokeffError(
            f"corpus too small for the asked vocabulary: {stage} ran out of pairs seen at least "
            f"{min_frequency} times at {size:,} of {target:,} tokens (give more text or a smaller --vocab)"
        )
