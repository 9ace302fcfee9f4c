"""Streaming token ids as text, with transformers' word-buffering streamer."""

from __future__ import annotations

import torch
from transformers import TextStreamer

from tokeff.decoding.types import TextCallback


class CallbackStreamer(TextStreamer):
    """transformers' TextStreamer (holds text back until a word is complete), writing to a callback."""

    def __init__(self, tokenizer, on_text: TextCallback | None) -> None:
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.on_text = on_text

    def push(self, token_ids: list[int]) -> None:
        if self.on_text is not None and token_ids:
            self.put(torch.tensor(token_ids))

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if self.on_text is not None and text:
            self.on_text(text)
