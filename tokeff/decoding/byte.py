"""`--method byte`: decoding with the model's exact byte-level distribution (see `bytelevel/model.py`).

A prompt that ends inside a token ("...ret") is continued as the model would continue that
text, not as it continues the prompt's truncated tokenization. For this method a new token is
a byte: `--max-new-tokens` counts bytes and `token_ids` holds byte values.
"""

from __future__ import annotations

from tokeff.decoding.bytelevel import ByteLevelModel, generate_bytes
from tokeff.decoding.registry import DecodeMethod, register
from tokeff.decoding.sampling import make_chooser
from tokeff.decoding.types import DecodeResult, DecodeStats, Prompt, TextCallback


@register
class ByteLevel(DecodeMethod):
    name = "byte"
    summary = "exact byte-level decoding: continues prompts that end inside a token (counts bytes)"
    lossless = False

    def generate(self, prompt: Prompt, on_text: TextCallback | None = None) -> DecodeResult:
        stats = DecodeStats(prompt_tokens=len(prompt.ids))
        if self.lm.encode(prompt.text) == prompt.ids:  # plain text: the byte level reads the text
            model = ByteLevelModel(self.lm, text=prompt.text, stats=stats)
        else:  # a chat template (special tokens): it ends on a token boundary, keep its tokens
            model = ByteLevelModel(self.lm, context_ids=prompt.ids, stats=stats)
        data = generate_bytes(
            model, make_chooser(self.config), self.config.max_new_tokens, self.config.stop_at_eos, on_text=on_text
        )
        stats.new_tokens = len(data)
        stats.finish()
        return DecodeResult(
            text=data.decode("utf-8", errors="replace"),
            token_ids=list(data),
            stats=stats,
            details={"bytes": len(data), "model_calls_per_byte": stats.forward_passes / max(1, len(data))},
        )
