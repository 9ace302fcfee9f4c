"""`--method speculative --draft MODEL`: a small draft model proposes, the target verifies in one pass.

Two paths, chosen by comparing vocabularies (reported as `draft_path` in the result):

- same tokenizer (a draft of the same family, or one transplanted to the target's tokenizer with
  `tokeff transplant`): the draft proposes target token ids. Greedy drafts are verified by the
  target's own picks; when sampling, drafts are sampled from the draft's warped distribution q and
  accepted with the speculative-sampling rule, so the output still follows the target exactly.
- different tokenizers: the draft reads the committed text in its own tokens, proposes greedily,
  and its proposal is turned back into text (canonical token bytes) and re-tokenized by the target.
  Such drafts are fixed guesses, verified by the target's own picks (exact for sampling too).

The number of draft tokens per step is chosen by `DraftBudget` from the measured acceptance per
depth and the measured costs (one draft pass per token plus one target pass), or fixed with
`--draft-tokens`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from tokeff.core.errors import TokeffError
from tokeff.core.options import Option
from tokeff.core.models import LoadedModel, load_model
from tokeff.decoding.budget import DraftBudget
from tokeff.decoding.drafting import Draft, Drafter, DraftingMethod
from tokeff.decoding.registry import register
from tokeff.decoding.runner import CachedRunner
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeStats, Prompt
from tokeff.decoding.verify import Acceptance, DraftTree
from tokeff.tokenizers_tools.canonical import vocab_bytes

MAX_DRAFT = 16
SAME_TOKENIZER = "same tokenizer"
RETOKENIZED = "re-tokenized through text"


def same_vocabulary(target: LoadedModel, draft: LoadedModel) -> bool:
    return target.tokenizer.get_vocab() == draft.tokenizer.get_vocab()


class TextBridge:
    """Carries text between two tokenizers through canonical token bytes (no lossy decode of partial characters)."""

    def __init__(self, target: LoadedModel, draft: LoadedModel) -> None:
        self.target, self.draft = target, draft
        self.target_bytes = vocab_bytes(target.tokenizer).token_bytes
        self.draft_bytes = vocab_bytes(draft.tokenizer).token_bytes

    @staticmethod
    def _text(table: list[bytes | None], ids: list[int]) -> str:
        # A proposal may end inside a multi-byte character: drop the incomplete tail.
        return b"".join(table[i] or b"" for i in ids if i < len(table)).decode("utf-8", errors="ignore")

    def draft_context(self, prompt: Prompt, generated: list[int]) -> list[int]:
        """The committed text (prompt and target tokens so far) in the draft's tokens."""
        return self.draft.encode(prompt.text + self._text(self.target_bytes, generated))

    def to_target(self, draft_ids: list[int]) -> list[int]:
        text = self._text(self.draft_bytes, draft_ids)
        return self.target.encode_plain(text) if text else []


class DraftModelDrafter(Drafter):
    def __init__(self, method: SpeculativeDecoding, prompt: Prompt, chooser: TokenChooser) -> None:
        self.method = method
        self.prompt = prompt
        self.chooser = chooser
        self.stats = DecodeStats()
        self.runner = CachedRunner(method.draft, self.stats, rollback=True)
        self.cached: list[int] = []  # draft token ids whose keys and values the draft cache holds
        # Sampled drafts need a distribution q over the target's vocabulary; a plug-in chooser (a watermark)
        # decides by its own rule, so its drafts stay greedy guesses.
        self.sampled = method.bridge is None and not chooser.greedy and method.config.chooser_factory is None
        self.draft_seconds = 0.0
        self.proposed = 0

    def _draft_ids(self, context: list[int]) -> list[int]:
        if self.method.bridge is None:
            return context
        return self.method.bridge.draft_context(self.prompt, context[len(self.prompt.ids) :])

    def propose(self, context: list[int], limit: int) -> Draft:
        budget = self.method.budget
        budget.node_seconds = self.draft_seconds / self.proposed if self.proposed else 0.0
        rates = np.cumprod(budget.rates.rates()[: max(0, min(MAX_DRAFT, limit))])
        count = budget.choose_size(rates)
        if count == 0:
            return Draft(DraftTree.chain(context[-1], []))
        ids = self._draft_ids(context)
        common = self.runner.crop_to_common(self.cached, ids, len(ids) - 1)
        self.cached = self.cached[:common]
        feed, proposal, probs = ids[common:], [], []
        started = time.perf_counter()
        for _ in range(count):
            logits = self.runner.forward(feed, logits_to_keep=1)[-1]
            self.cached += feed
            if self.method.bridge is None:
                logits = _fit_vocabulary(logits, self.method.vocab)
            if self.sampled:
                probs.append(self.chooser.distribution(logits))
                token = self.chooser.sample(probs[-1])
            else:
                token = int(logits.argmax())
            proposal.append(token)
            feed = [token]
            if token in self.method.draft.eos_token_ids:
                break
        self.draft_seconds += time.perf_counter() - started
        self.proposed += len(proposal)
        if self.method.bridge is not None:
            proposal = self.method.bridge.to_target(proposal)[:limit]
        return Draft(DraftTree.chain(context[-1], proposal), torch.stack(probs) if probs else None)

    def observe(self, draft: Draft, logits: torch.Tensor, accepted: Acceptance, seconds: float) -> None:
        depth = range(len(draft.tree))
        slots = [max(d - 1, 0) for d in depth]
        draft_part = self.method.budget.node_seconds * (len(draft.tree) - 1)
        self.method.budget.observe(draft.tree, slots, depth, accepted.tokens, len(draft.tree), seconds - draft_part)

    def details(self) -> dict[str, Any]:
        return {
            "draft": self.method.draft.spec,
            "draft_path": SAME_TOKENIZER if self.method.bridge is None else RETOKENIZED,
            "draft_forward_passes": self.stats.forward_passes,
            "draft_peak_kv_bytes": self.stats.peak_kv_bytes,
            "draft_tokens": self.method.budget.fixed or "adaptive",
        }


@register
class SpeculativeDecoding(DraftingMethod):
    name = "speculative"
    summary = "speculative decoding with a draft model (--draft), across tokenizers too (lossless)"
    options = (
        Option("draft", str, None, "the draft model (any tokenizer)"),
        Option("draft_tokens", int, None, "draft tokens per step (default: adaptive)", min=1, max=MAX_DRAFT),
    )

    def __init__(self, lm, config, **options: Any) -> None:
        draft = options.get("draft")
        if isinstance(draft, LoadedModel):  # already loaded by the caller (the CLI, with its --device and --dtype)
            options = {**options, "draft": draft.spec}
        super().__init__(lm, config, **options)
        if draft is None:
            raise TokeffError("--method speculative needs --draft MODEL")
        fixed = self.opts["draft_tokens"]
        if not isinstance(draft, LoadedModel):
            draft = load_model(draft, device=lm.device.type, dtype=str(lm.model.dtype).removeprefix("torch."))
        self.draft = draft
        self.vocab = lm.model.get_output_embeddings().weight.shape[0]
        self.bridge = None if same_vocabulary(lm, draft) else TextBridge(lm, draft)
        # Kept across generations: measured costs and acceptance per depth carry over.
        self.budget = DraftBudget([0.7] * MAX_DRAFT, fixed=fixed, explore=(3, 8))

    def drafter(self, prompt: Prompt, chooser: TokenChooser) -> Drafter:
        return DraftModelDrafter(self, prompt, chooser)


def _fit_vocabulary(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Draft logits over the target's vocabulary size (embedding matrices are often padded differently)."""
    if logits.shape[-1] >= vocab:
        return logits[..., :vocab]
    return torch.nn.functional.pad(logits, (0, vocab - logits.shape[-1]), value=-torch.inf)
