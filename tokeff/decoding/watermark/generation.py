"""Watermarked generation: a token chooser for `tokeff decode --watermark`, and batched generation.

Both paths apply the same rule per scheme: `exp` warps the logits as plain sampling would
(temperature, top-k, top-p) and picks the token by exponential-minimum sampling at the text's key
position; `kgw` adds the bias to the green tokens of the raw logits, then decodes as usual (greedy
or sampling). Batched generation runs transformers' `generate` with a logits processor that applies
the rule, so padding, caches and stopping are the library's.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig, Prompt
from tokeff.decoding.watermark.exp import key_positions
from tokeff.decoding.watermark.keys import WatermarkKey
from tokeff.decoding.watermark.kgw import green_mask
from tokeff.kernels.exp_sampling import exp_choice


def check_sampling(key: WatermarkKey, config: DecodeConfig) -> None:
    if key.scheme == "exp" and config.temperature == 0:
        raise TokeffError("the exp watermark samples: use --method sample (temperature > 0), not greedy decoding")


def draw_offsets(key: WatermarkKey, count: int, seed: int | None) -> np.ndarray:
    """Each text's starting key position (exp): from `seed` if given, else fresh OS randomness."""
    n = key["key_length"] if key.scheme == "exp" else 1
    if seed is None:
        return np.array([secrets.randbelow(n) for _ in range(count)], dtype=np.int64)
    return np.random.default_rng([seed, 0x5EED]).integers(0, n, size=count)


def kgw_bias(key: WatermarkKey, logits: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """Logits [rows, vocab] plus `bias` on the green list of each row's context [rows, width]."""
    green = green_mask(key, contexts.cpu().numpy(), logits.shape[-1])
    return logits + key["bias"] * torch.from_numpy(green).to(device=logits.device, dtype=logits.dtype)


class ExpChooser(TokenChooser):
    """Exponential-minimum sampling at key position (offset + tokens generated so far) mod n."""

    def __init__(self, config: DecodeConfig, key: WatermarkKey, offset: int) -> None:
        check_sampling(key, config)
        super().__init__(config)
        self.key = key
        self.offset = offset
        self.prompt_length: int | None = None

    def choose(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        if self.prompt_length is None:
            self.prompt_length = len(history)
        position = key_positions(self.key, self.offset, len(history) - self.prompt_length)
        probs = self.distribution(logits).reshape(1, -1).numpy()
        return int(exp_choice(probs, self.key.words[[position]])[0])

    def sample(self, probs: torch.Tensor) -> int:
        raise TokeffError("this decode method draws tokens without their position in the text, "
                          "so it cannot carry a watermark; use --method sample")


class KgwChooser(TokenChooser):
    """Green-list bias on the logits, then greedy or sampling as configured."""

    def __init__(self, config: DecodeConfig, key: WatermarkKey) -> None:
        super().__init__(config)
        self.key = key

    def choose(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        width = self.key["context_width"]
        if len(history) >= width:
            context = torch.tensor([list(history[-width:])])
            logits = kgw_bias(self.key, logits.reshape(1, -1).float(), context)[0]
        return int(logits.argmax()) if self.greedy else super().sample(self.distribution(logits))

    def sample(self, probs: torch.Tensor) -> int:
        raise TokeffError("this decode method draws tokens without their context, "
                          "so it cannot carry a watermark; use --method sample or greedy")


def chooser_factory(key: WatermarkKey, offset: int | None = None) -> Callable[[DecodeConfig], TokenChooser]:
    """The `DecodeConfig.chooser_factory` that watermarks every text a decode method generates."""

    def make(config: DecodeConfig) -> TokenChooser:
        if key.scheme == "exp":
            start = offset if offset is not None else int(draw_offsets(key, 1, config.seed)[0])
            return ExpChooser(config, key, start)
        return KgwChooser(config, key)

    return make


class ExpLogitsProcessor(LogitsProcessor):
    """Batched `ExpChooser`: leaves only the exp-sampled token of each row (greedy decoding then takes it)."""

    def __init__(self, key: WatermarkKey, config: DecodeConfig, offsets: np.ndarray, prompt_length: int) -> None:
        self.key = key
        self.warp = TokenChooser(config)
        self.offsets = offsets
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        positions = key_positions(self.key, self.offsets, input_ids.shape[1] - self.prompt_length)
        tokens = exp_choice(self.warp.distribution(scores).numpy(), self.key.words[positions])
        chosen = torch.full_like(scores, -torch.inf)
        chosen[torch.arange(len(tokens)), torch.from_numpy(tokens).to(scores.device)] = 0.0
        return chosen


class KgwLogitsProcessor(LogitsProcessor):
    def __init__(self, key: WatermarkKey) -> None:
        self.key = key

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return kgw_bias(self.key, scores, input_ids[:, -self.key["context_width"] :])


@dataclass
class Generation:
    prompt: str
    text: str
    token_ids: list[int]
    offset: int | None = None  # exp: the key position of the first token

    def to_json(self) -> dict:
        record = {"prompt": self.prompt, "text": self.text, "tokens": len(self.token_ids), "token_ids": self.token_ids}
        if self.offset is not None:
            record["offset"] = self.offset
        return record


@torch.inference_mode()
def generate_texts(
    lm: LoadedModel,
    prompts: list[str],
    key: WatermarkKey | None,
    config: DecodeConfig,
    batch_size: int = 16,
    chat: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Continue every prompt (watermarked with `key`, or plain sampling without one), `batch_size` at a time."""
    if key is not None:
        check_sampling(key, config)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    offsets = draw_offsets(key, len(prompts), config.seed) if key is not None and key.scheme == "exp" else None
    eos = sorted(lm.eos_token_ids)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    results: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        texts = prompts[start : start + batch_size]
        ids = [Prompt.from_text(lm, text, chat=chat).ids for text in texts]
        width = max(len(row) for row in ids)
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=lm.device)
        attention = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=lm.device)
        rows = offsets[start : start + batch_size] if offsets is not None else None
        generation_config, processors = _generation_setup(key, config, rows, width, pad, eos)
        output = lm.model.generate(
            input_ids=input_ids, attention_mask=attention, generation_config=generation_config,
            logits_processor=processors,
        )
        for row, text in enumerate(texts):
            tokens = _until_eos(output[row, width:].tolist(), set(eos) if config.stop_at_eos else set())
            results.append(Generation(
                prompt=text,
                text=lm.tokenizer.decode(tokens, skip_special_tokens=True),
                token_ids=tokens,
                offset=int(rows[row]) if rows is not None else None,
            ))
        if on_batch is not None:
            on_batch(len(texts))
    return results


def _generation_setup(key, config, offsets, prompt_length, pad, eos):
    settings = dict(
        max_new_tokens=config.max_new_tokens, pad_token_id=pad, eos_token_id=eos or None,
        min_new_tokens=0 if config.stop_at_eos else config.max_new_tokens,
    )
    processors = LogitsProcessorList()
    if key is not None and key.scheme == "exp":  # the processor warps and picks; greedy decoding takes its pick
        processors.append(ExpLogitsProcessor(key, config, offsets, prompt_length))
        return GenerationConfig(do_sample=False, **settings), processors
    if key is not None:
        processors.append(KgwLogitsProcessor(key))
    if config.temperature == 0:
        return GenerationConfig(do_sample=False, **settings), processors
    sampling = GenerationConfig(
        do_sample=True, temperature=config.temperature, top_k=config.top_k or 0, top_p=config.top_p or 1.0, **settings
    )
    return sampling, processors


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in eos:
            return tokens[: index + 1]
    return tokens
