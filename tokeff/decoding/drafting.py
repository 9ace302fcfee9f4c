"""The draft-then-verify loop shared by prompt lookup, Token Recycling and speculative decoding.

Each step a `Drafter` proposes a `DraftTree` after the last committed token, the target model scores
every node in one forward pass (a chain with the usual causal mask, a tree with a tree mask), the
acceptance rule of `verify` keeps exactly what plain decoding would have produced, and the cache
keeps only the accepted path.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from tokeff.core.errors import TokeffError
from tokeff.decoding.registry import DecodeMethod
from tokeff.decoding.runner import CachedRunner
from tokeff.decoding.sampling import TokenChooser, make_chooser
from tokeff.decoding.streaming import CallbackStreamer
from tokeff.decoding.tree_attention import forward_tree
from tokeff.decoding.types import DecodeResult, DecodeStats, Prompt, TextCallback
from tokeff.decoding.verify import Acceptance, DraftTree, accept_by_choice, accept_by_ratio


@dataclass
class Draft:
    tree: DraftTree
    # For drafts sampled from a draft model: q of each chain token (rows aligned with tree.tokens[1:]);
    # None for fixed guesses, which are verified by the chooser's own picks.
    probs: torch.Tensor | None = None


class Drafter(ABC):
    """Proposes drafts during one generation and learns from what the target accepted."""

    def prefill(self, prompt_ids: list[int], logits: torch.Tensor) -> None:
        """Sees the prompt's logits (the last rows of them, see `DraftingMethod.prefill_logits`)."""

    @abstractmethod
    def propose(self, context: list[int], limit: int) -> Draft:
        """A draft after `context` (every committed token, ending with the root) at most `limit` deep."""

    def observe(self, draft: Draft, logits: torch.Tensor, accepted: Acceptance, seconds: float) -> None:
        """Called after each verification with the target's logits for every draft node and the step's time."""

    def details(self) -> dict[str, Any]:
        return {}


class DraftingMethod(DecodeMethod):
    """A lossless method: subclasses only say how to draft."""

    prefill_logits: int = 1  # how many of the prompt's last positions get logits (Token Recycling wants many)

    @abstractmethod
    def drafter(self, prompt: Prompt, chooser: TokenChooser) -> Drafter:
        """A fresh drafter for one generation."""

    def generate(self, prompt: Prompt, on_text: TextCallback | None = None) -> DecodeResult:
        if not prompt.ids:
            raise TokeffError("the prompt produced no tokens")
        stats = DecodeStats(prompt_tokens=len(prompt.ids))
        runner = CachedRunner.for_config(self.lm, stats, self.config, rollback=True)
        chooser = make_chooser(self.config)
        drafter = self.drafter(prompt, chooser)
        streamer = CallbackStreamer(self.lm.tokenizer, on_text)
        eos = self.lm.eos_token_ids if self.config.stop_at_eos else set()
        limit = self.config.max_new_tokens

        logits = runner.forward(prompt.ids, logits_to_keep=min(self.prefill_logits, len(prompt.ids)))
        runner.crop(runner.length)  # trims what sliding-window layers recorded of a long prompt
        drafter.prefill(prompt.ids, logits)
        stats.end_prefill()
        generated = [chooser.choose(logits[-1], prompt.ids)]
        streamer.push(generated)
        drafted = accepted_drafts = 0
        while generated[-1] not in eos and len(generated) < limit:
            context = prompt.ids + generated
            started = time.perf_counter()
            draft = drafter.propose(context, limit - len(generated) - 1)
            base = runner.length
            if draft.tree.is_chain:
                logits = runner.forward(draft.tree.tokens)
            else:
                logits = forward_tree(runner, draft.tree)
            if draft.probs is None:
                accepted = accept_by_choice(draft.tree, logits, chooser, context)
            else:
                accepted = accept_by_ratio(draft.tree.tokens[1:], draft.probs, logits, chooser)
            if draft.tree.is_chain:
                runner.crop(base + 1 + len(accepted.path))
            else:
                runner.keep_new(len(draft.tree), [0, *accepted.path])
            drafter.observe(draft, logits, accepted, time.perf_counter() - started)
            drafted += len(draft.tree) - 1
            accepted_drafts += len(accepted.path)
            new = accepted.tokens[: limit - len(generated)]
            stop = next((i for i, token in enumerate(new) if token in eos), None)
            new = new if stop is None else new[: stop + 1]
            generated.extend(new)
            streamer.push(new)
        streamer.end()
        stats.new_tokens = len(generated)
        stats.finish()
        text = self.lm.tokenizer.decode(generated, skip_special_tokens=True)
        steps = stats.forward_passes - 1
        details = {
            "drafted_per_step": drafted / steps if steps else 0.0,
            "draft_acceptance": accepted_drafts / drafted if drafted else 0.0,
            **drafter.details(),
        }
        return DecodeResult(text=text, token_ids=generated, stats=stats, details=details)
