"""The `kgw` scheme (Kirchenbauer et al.): a green list seeded by the previous tokens gets a logit bias.

Token v is green after context c (the previous `context_width` tokens) when u(word(c), v) <
green_fraction, where word(c) chains the key word through the context tokens. Deciding each
(context, token) pair by its own uniform, rather than by cutting a permutation of the vocabulary,
makes the pairs independent Bernoulli(green_fraction) under the null, so that the binomial tail is
exact. Detection counts each distinct (context, token) pair once: a repeated phrase is one piece
of evidence, not many, and counting it again would break the binomial null.

`hashing` lefthash or selfhash instead draws green lists as transformers' `WatermarkLogitsProcessor`
does (`torch.randperm` of the model's `vocab_rows`, seeded from the key and the context), so tokeff
detects what `generate(watermarking_config=WatermarkingConfig(...))` wrote and the reverse
(`keygen --from-transformers`, `watermark export`). A context's green list then has exactly
int(vocab_rows * green_fraction) tokens, so the green count of a context's distinct tokens is
hypergeometric; the p-value is the exact tail of the sum over contexts (distinct green-list seeds).
Where the two differ, tokeff follows transformers: the bias is added after temperature/top-k/top-p
in `watermark generate` (transformers appends its processor last); the green lists are drawn on the
CPU (transformers' generator on a GPU differs); detection counts each distinct (seed, token) once,
like `WatermarkDetector(ignore_repeated_ngrams=True)` (without it, transformers' z-score counts
repeats and its normal p-value is not exact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import bdtrc  # scipy.stats would add a second to every detection worker's start

from tokeff.core.errors import TokeffError
from tokeff.core.model_checks import text_config
from tokeff.core.resolve import model_folder
from tokeff.core.options import Option
from tokeff.decoding.watermark.keys import WatermarkKey
from tokeff.decoding.watermark.scheme import MIN_TOKENS, SCHEMES, Score, WatermarkScheme
from tokeff.kernels.keyed_uniform import GOLDEN, keyed_uniforms, mix64

if TYPE_CHECKING:
    from transformers import LogitsProcessor

    from tokeff.decoding.sampling import TokenChooser
    from tokeff.decoding.types import DecodeConfig
    from tokeff.decoding.watermark.transformers_green import TransformersGreenLists


def context_words(key: WatermarkKey, contexts: np.ndarray) -> np.ndarray:
    """The green-list seed of each context row (int array [..., context_width])."""
    contexts = np.asarray(contexts).astype(np.uint64)
    words = np.full(contexts.shape[:-1], key.words[0], dtype=np.uint64)
    for column in range(contexts.shape[-1]):
        words = mix64(words + (contexts[..., column] + np.uint64(1)) * GOLDEN)
    return words


def green_mask(key: WatermarkKey, contexts: np.ndarray, vocab_size: int) -> np.ndarray:
    """Boolean [rows, vocab_size]: which tokens are green after each context row."""
    words = context_words(key, contexts)
    return keyed_uniforms(words[:, None], np.arange(vocab_size)[None, :]) < key["green_fraction"]


TRANSFORMERS = ("lefthash", "selfhash")  # transformers' seeding schemes
def hashing_key(word: np.uint64) -> int:
    """transformers' `hashing_key` of a key word: its top 63 bits (transformers multiplies it in int64)."""
    return int(word) >> 1


def score_tokens(key: WatermarkKey, tokens: np.ndarray) -> Score:
    """z-score of the green count (for reading; the p-value is the exact binomial tail) over distinct pairs."""
    width, fraction = key["context_width"], key["green_fraction"]
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) <= width:
        return Score(0.0, 1.0, 1.0, {"scored_pairs": 0, "green": 0})
    contexts = np.lib.stride_tricks.sliding_window_view(tokens[:-1], width)
    targets = tokens[width:]
    words = context_words(key, contexts)
    pairs = np.unique(np.stack([words, targets.astype(np.uint64)], axis=1), axis=0)
    green = int((keyed_uniforms(pairs[:, 0], pairs[:, 1]) < fraction).sum())
    scored = len(pairs)
    z = (green - fraction * scored) / np.sqrt(scored * fraction * (1 - fraction))
    p_value = 1.0 if green == 0 else float(bdtrc(green - 1, scored, fraction))  # P(green count >= green)
    return Score(float(z), p_value, fraction**scored, {"scored_pairs": scored, "green": green})


@SCHEMES.register
class Kgw(WatermarkScheme):
    name = "kgw"
    summary = "green list (Kirchenbauer et al.)"
    options = (
        Option("green_fraction", float, 0.25, "Fraction of the vocabulary that is green.",
               min=0, max=1, min_exclusive=True, max_exclusive=True),
        Option("bias", float, 2.0, "Logit bias of green tokens.", min=0, max=100, min_exclusive=True),
        Option("context_width", int, 1, "Previous tokens that seed the green list.", min=1, max=16),
        Option("hashing", str, "tokeff", "Green lists: tokeff's (independent per token, exact binomial test) or "
               "transformers' lefthash/selfhash (its WatermarkLogitsProcessor).", choices=("tokeff", *TRANSFORMERS)),
        Option("vocab_rows", int, 0, "lefthash/selfhash: vocabulary rows transformers permutes (the model's "
               "config.vocab_size; 0: read it from the model at keygen).", min=0),
        MIN_TOKENS,
    )
    # transformers' WatermarkingConfig fields and the tokeff parameters they set
    TRANSFORMERS_FIELDS = {"greenlist_ratio": "green_fraction", "bias": "bias", "seeding_scheme": "hashing",
                           "context_width": "context_width"}

    @classmethod
    def for_model(cls, params: Mapping[str, Any], model: str) -> dict[str, Any]:
        if params["hashing"] not in TRANSFORMERS or params["vocab_rows"]:
            return dict(params)
        rows = text_config(model_folder(model)).get("vocab_size")
        if not isinstance(rows, int) or rows < 1:
            raise TokeffError(f"{model}: its config has no vocab_size; pass --vocab-rows")
        return {**params, "vocab_rows": rows}

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
        """From `WatermarkingConfig(...).to_dict()`: its hashing_key becomes the secret word."""
        unknown = sorted(set(config) - set(cls.TRANSFORMERS_FIELDS) - {"hashing_key", "watermarking_type"})
        if unknown:
            raise TokeffError(f"unknown WatermarkingConfig field(s): {', '.join(unknown)}")
        key = config.get("hashing_key", 15485863)  # transformers' default
        if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < 2**63:
            raise TokeffError("a WatermarkingConfig's 'hashing_key' must be an integer in [0, 2**63)")
        given = {name: config[field] for field, name in cls.TRANSFORMERS_FIELDS.items() if field in config}
        params = cls.parameters({"hashing": "lefthash", **given})
        if params["hashing"] not in TRANSFORMERS:
            raise TokeffError(f"seeding_scheme must be one of {', '.join(TRANSFORMERS)}")
        return params, np.array([key << 1], dtype=np.uint64)

    def to_transformers(self) -> dict[str, Any]:
        if self.key["hashing"] not in TRANSFORMERS:
            raise TokeffError("this kgw key uses tokeff's green lists, which transformers cannot draw; "
                              "make a key with --hashing lefthash (or selfhash) to share it")
        config = {field: self.key[name] for field, name in self.TRANSFORMERS_FIELDS.items()}
        return {**config, "hashing_key": hashing_key(self.key.words[0])}

    @cached_property
    def transformers_green(self) -> TransformersGreenLists:
        from tokeff.decoding.watermark.transformers_green import TransformersGreenLists  # torch: only this hashing

        return TransformersGreenLists(self.key)

    def chooser(self, config: DecodeConfig, offset: int | None = None) -> TokenChooser:
        from tokeff.decoding.watermark.samplers.kgw import KgwChooser

        return KgwChooser(config, self.key)

    def logits_processor(self, config: DecodeConfig, offsets: np.ndarray | None, prompt_length: int) -> LogitsProcessor:
        from tokeff.decoding.watermark.samplers.kgw import KgwLogitsProcessor

        return KgwLogitsProcessor(self.key)

    def score(self, texts: Sequence[np.ndarray]) -> list[Score]:
        if self.key["hashing"] in TRANSFORMERS:
            return [self.transformers_green.score(tokens) for tokens in texts]
        return [score_tokens(self.key, tokens) for tokens in texts]
