"""`--method dynamic`: prefill a long prompt with dynamically merged tokens, then decode as usual.

The prompt's most frequent adjacent token pairs are merged into new tokens (batch-level BPE on
the prompt, within words unless `across_words`), whose input embeddings come from their pieces;
the shorter prompt is fed as `inputs_embeds`, so prefill runs over fewer positions and the KV
cache holds fewer entries. Generation then proceeds in the model's own vocabulary (greedy, or
sampling with --temperature). Not lossless: the merged positions change what the model sees.
"""

from __future__ import annotations

import torch

from tokeff.core.options import Option
from tokeff.decoding.autoregressive import Autoregressive
from tokeff.decoding.registry import register
from tokeff.decoding.runner import CachedRunner
from tokeff.decoding.types import DecodeResult, Prompt, TextCallback


@register
class DynamicPrefill(Autoregressive):
    name = "dynamic"
    summary = "prefill with the prompt's frequent token pairs merged (shorter prefill and KV cache), then decode"
    lossless = False
    options = (
        Option("merges", int, 256, "most merges added per prompt", min=1),
        Option("across_words", bool, False, "let merges cross word boundaries"),
        Option("embedding", str, "mean", "a merged token's input embedding from its pieces", choices=("mean", "last")),
        Option("min_count", int, 2, "merge only pairs seen this often", min=1),
    )

    def prefill(self, runner: CachedRunner, prompt: Prompt) -> torch.Tensor:
        from tokeff.tokenizers_tools.canonical import vocab_bytes
        from tokeff.tokenizers_tools.dynamic.merging import merge_batch
        from tokeff.tokenizers_tools.dynamic.model import DynamicModel

        base_size = self.lm.model.get_input_embeddings().num_embeddings
        vocab, [merged] = merge_batch(
            [prompt.ids], vocab_bytes(self.lm.tokenizer), base_size, self.opts["merges"],
            across_words=self.opts["across_words"], min_count=self.opts["min_count"],
        )
        self._details = {
            "merges": len(vocab),
            "prefill_tokens": len(merged),
            "prompt_length_reduction": 1 - len(merged) / len(prompt.ids),
        }
        embeds = DynamicModel(self.lm, vocab, self.opts["embedding"]).inputs_embeds(merged)
        return runner.forward_embeds(embeds)[-1]

    def generate(self, prompt: Prompt, on_text: TextCallback | None = None) -> DecodeResult:
        result = super().generate(prompt, on_text)
        result.details.update(self._details)
        return result
