"""Plain autoregressive decoding, one forward pass per token: the baseline every method is measured against."""

from __future__ import annotations

import torch

from tokeff.core.errors import TokeffError
from tokeff.decoding.registry import DecodeMethod, register
from tokeff.decoding.runner import CachedRunner
from tokeff.decoding.sampling import make_chooser
from tokeff.decoding.streaming import CallbackStreamer
from tokeff.decoding.types import DecodeResult, DecodeStats, Prompt, TextCallback


class Autoregressive(DecodeMethod):
    prefill_chunk: int | None = None  # feed long prompts in pieces of this many tokens (bounded caches)

    def prefill(self, runner: CachedRunner, prompt: Prompt) -> torch.Tensor:
        """Next-token logits after the whole prompt; a subclass may feed the prompt differently."""
        feed = prompt.ids
        chunk = self.prefill_chunk or len(feed)
        while len(feed) > chunk:
            runner.forward(feed[:chunk], logits_to_keep=1)
            feed = feed[chunk:]
        # Only the last position's logits: a 262k vocabulary makes a long prompt's full logits costly.
        return runner.forward(feed, logits_to_keep=1)[-1]

    def generate(self, prompt: Prompt, on_text: TextCallback | None = None) -> DecodeResult:
        if not prompt.ids:
            raise TokeffError("the prompt produced no tokens")
        stats = DecodeStats(prompt_tokens=len(prompt.ids))
        runner = CachedRunner.for_config(self.lm, stats, self.config)
        chooser = make_chooser(self.config)
        streamer = CallbackStreamer(self.lm.tokenizer, on_text)
        eos = self.lm.eos_token_ids if self.config.stop_at_eos else set()
        generated: list[int] = []
        logits = self.prefill(runner, prompt)
        stats.end_prefill()
        while len(generated) < self.config.max_new_tokens:
            token = chooser.choose(logits, prompt.ids + generated)
            generated.append(token)
            streamer.push([token])
            if token in eos or len(generated) == self.config.max_new_tokens:
                break
            logits = runner.forward([token])[-1]
        streamer.end()
        stats.new_tokens = len(generated)
        stats.finish()
        text = self.lm.tokenizer.decode(generated, skip_special_tokens=True)
        return DecodeResult(text=text, token_ids=generated, stats=stats)


@register
class Greedy(Autoregressive):
    name = "greedy"
    summary = "argmax at every step (the baseline)"

    def __init__(self, lm, config, **options) -> None:
        if config.temperature != 0:
            raise TokeffError("--method greedy does not sample; use --method sample with --temperature")
        super().__init__(lm, config, **options)


@register
class Sample(Autoregressive):
    name = "sample"
    summary = "seeded sampling with temperature / top-k / top-p"
    default_temperature = 1.0

    def __init__(self, lm, config, **options) -> None:
        if config.temperature == 0:
            raise TokeffError("--method sample needs --temperature > 0 (use --method greedy for argmax)")
        super().__init__(lm, config, **options)
