"""`--method heal`: token healing, the usual fix for prompts that end inside a token.

The prompt's last token is dropped and the first new token must start with its bytes
("...ret" backs up to "..." and continues with "return", "retry", ...), then decoding goes on
as plain greedy or sampling. It repairs one token boundary; `--method byte` is exact.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from tokeff.core.scoring import prefix_token_id
from tokeff.decoding.autoregressive import Autoregressive
from tokeff.decoding.bytelevel.vocab import ByteVocab
from tokeff.decoding.registry import register
from tokeff.decoding.sampling import TokenChooser, make_chooser
from tokeff.decoding.types import DecodeResult, Prompt, TextCallback


class _ConstrainFirst:
    """A chooser whose first choice is restricted to `allowed` token ids; later choices are untouched."""

    def __init__(self, inner: TokenChooser, allowed: torch.Tensor) -> None:
        self.inner = inner
        self.allowed: torch.Tensor | None = allowed

    def choose(self, logits: torch.Tensor, history) -> int:
        if self.allowed is not None:
            masked = torch.full_like(logits, -math.inf)
            allowed = self.allowed.to(logits.device)
            masked[allowed] = logits[allowed]
            logits, self.allowed = masked, None
        return self.inner.choose(logits, history)


class _SkipChars:
    """Streams text after its first `count` characters (the prompt's own backed-up text)."""

    def __init__(self, on_text: TextCallback | None, count: int) -> None:
        self.on_text = on_text
        self.count = count

    def __call__(self, text: str) -> None:
        skipped = min(self.count, len(text))
        self.count -= skipped
        if self.on_text is not None and text[skipped:]:
            self.on_text(text[skipped:])


@register
class TokenHealing(Autoregressive):
    name = "heal"
    summary = "token healing: back up the prompt's last token, make the first new token extend it"
    lossless = False

    def generate(self, prompt: Prompt, on_text: TextCallback | None = None) -> DecodeResult:
        vocab = ByteVocab.for_model(self.lm)
        last = prompt.ids[-1] if prompt.ids else None
        backed_up = vocab.token_bytes[last] if last is not None and last < len(vocab) else None
        if not backed_up:  # nothing to heal (a special token ends the prompt)
            return super().generate(prompt, on_text)
        chooser = _ConstrainFirst(make_chooser(self.config), vocab.extending(backed_up))
        plain = Autoregressive(self.lm, replace(self.config, chooser_factory=lambda config: chooser))
        context = prompt.ids[:-1] or [prefix_token_id(self.lm)]
        overlap = len(self.lm.tokenizer.decode([last]))
        result = plain.generate(Prompt(text=prompt.text, ids=context), on_text=_SkipChars(on_text, overlap))
        result.text = self.lm.tokenizer.decode(result.token_ids, skip_special_tokens=True)[overlap:]
        result.details["healed_token"] = last
        return result
