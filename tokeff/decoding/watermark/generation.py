"""Watermarked generation: the chooser hook for `tokeff decode --watermark`, and batched generation.

Both paths apply the key's scheme rule (`key.rule`, one module per scheme in `schemes/`): the
chooser for a decode method, a logits processor for batched generation, which runs transformers'
`generate` so that padding, caches and stopping are the library's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList

from tokeff.core.models import LoadedModel
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig, Prompt
from tokeff.decoding.watermark.keys import WatermarkKey


def chooser_factory(key: WatermarkKey, offset: int | None = None) -> Callable[[DecodeConfig], TokenChooser]:
    """The `DecodeConfig.chooser_factory` that watermarks every text a decode method generates."""
    return lambda config: key.rule.chooser(config, offset)


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
        key.rule.check_sampling(config)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    offsets = key.rule.offsets(len(prompts), config.seed) if key is not None else None
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
    if key is not None:
        processors.append(key.rule.logits_processor(config, offsets, prompt_length))
        if key.rule.picks_token:  # the processor warps and picks; greedy decoding takes its pick
            return GenerationConfig(do_sample=False, **settings), processors
        if key.rule.warps:  # the processor warped already: sample its distribution as it is
            return GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, **settings), processors
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
