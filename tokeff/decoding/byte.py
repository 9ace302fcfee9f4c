"""`--method byte`: decoding with the model's exact byte-level distribution (see `bytelevel/model.py`).

A prompt that ends inside a token ("...ret") is continued as the model would continue that
text, not as it continues the prompt's truncated tokenization. For this method a new token is
a byte: `--max-new-tokens` counts bytes and `token_ids` holds byte values.

By default the prompt's cover (the tokens that reach past its end, "return" after "...ret") is
chosen from the byte-level tree in one step, then decoding goes on in whole tokens, one model call
per token as plain decoding: greedy is the most probable cover followed by argmax tokens, and
sampling draws from the byte-level distribution (`bytelevel/generate.py` says why it is exact).
`--byte-greedy` chooses every byte from the next-byte distribution instead: greedy is then the
argmax byte after byte (and temperature, top-k and top-p act on bytes), at about one call per byte.
"""

from __future__ import annotations

from tokeff.core.options import Option
from tokeff.decoding.bytelevel import ByteLevelModel, generate_by_tokens, generate_bytes
from tokeff.decoding.registry import DecodeMethod, register
from tokeff.decoding.sampling import TokenChooser, make_chooser
from tokeff.decoding.types import DecodeResult, DecodeStats, Prompt, TextCallback


@register
class ByteLevel(DecodeMethod):
    name = "byte"
    summary = "exact byte-level decoding: continues prompts that end inside a token (counts bytes)"
    lossless = False
    options = (
        Option(
            "byte_greedy", bool, False,
            "choose byte by byte (argmax or sampling over the next byte) instead of a cover then whole tokens; "
            "about one model call per byte",
        ),
    )

    def generate(self, prompt: Prompt, on_text: TextCallback | None = None) -> DecodeResult:
        stats = DecodeStats(prompt_tokens=len(prompt.ids))
        if self.lm.encode(prompt.text) == prompt.ids:  # plain text: the byte level reads the text
            model = ByteLevelModel(self.lm, text=prompt.text, stats=stats)
        else:  # a chat template (special tokens): it ends on a token boundary, keep its tokens
            model = ByteLevelModel(self.lm, context_ids=prompt.ids, stats=stats)
        chooser = make_chooser(self.config)
        budget, stop_at_end = self.config.max_new_tokens, self.config.stop_at_eos
        if self.opts["byte_greedy"]:
            data = generate_bytes(model, chooser, budget, stop_at_end, on_text=on_text)
        else:
            # A plug-in chooser (a watermark) is built for token logits: the cover is chosen plainly.
            plain = chooser if self.config.chooser_factory is None else TokenChooser(self.config)
            data = generate_by_tokens(model, chooser, budget, stop_at_end, on_text=on_text, cover_chooser=plain)
        stats.new_tokens = len(data)
        stats.finish()
        return DecodeResult(
            text=data.decode("utf-8", errors="replace"),
            token_ids=list(data),
            stats=stats,
            details={
                "bytes": len(data),
                "steps": "bytes" if self.opts["byte_greedy"] else "tokens",
                "model_calls_per_byte": stats.forward_passes / max(1, len(data)),
            },
        )
