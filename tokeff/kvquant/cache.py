"""The quantized KV cache: a transformers `Cache` whose layers keep

- the first `sinks` tokens in full precision (attention sinks: every head attends to them heavily),
- older tokens as packed low-bit codes (`PackedTensor`), keys optionally before RoPE,
- the most recent `residual` tokens in full precision (KIVI's window: recent tokens matter most
  and stay exact until they are flushed in blocks of the quantizer's group).

With `fused` (the default), a model call gets back only the full-precision tokens, tagged with
the packed body, and `attention.py` attends the body straight from its codes (dequantize-and-
attend). Otherwise it gets the whole context: sinks, the packed body dequantized (and rotated) by
the kernels into one float buffer, the residual window and the new tokens, for any attention
implementation. Either way the new tokens attend to each other in full precision as they would
during prefill. Sliding-window layers (Gemma 3) drop what falls out of their window. Memory is
reported by `nbytes`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, get_layer_types_and_kwargs

from tokeff.core.errors import TokeffError
from tokeff.kvquant.attention import PackedBody, tag
from tokeff.kvquant.quantizer import KVQuantizer, PackedTensor
from tokeff.core.rope import RotaryTables


class QuantizedKVLayer(DynamicLayer):
    """One full-attention layer. `self.keys`/`self.values` hold the full-precision residual window,
    as in transformers' own quantized layers; keys everywhere but in the packed body are post-RoPE."""

    is_croppable = True

    def __init__(self, quantizer: KVQuantizer, layer_idx: int, rope: RotaryTables | None, residual: int, sinks: int,
                 fused: bool = True):
        super().__init__()
        self.fused = fused
        if quantizer.pre_rope and rope is None:
            raise ValueError("keys quantized before RoPE need the model's rotary tables")
        self.quantizer = quantizer
        self.layer_idx = layer_idx
        self.rope = rope
        self.residual = residual
        self.sinks = sinks
        self.cumulative_length = 0
        self.sink_keys = self.sink_values = None
        self.packed_keys: PackedTensor | None = None
        self.packed_values: PackedTensor | None = None
        self.skip = 0  # leading packed tokens already out of a sliding window (dropped a block at a time)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.quantizer = self.quantizer.to(self.device)
        empty = key_states[:, :, :0]
        self.keys, self.values = empty.clone(), value_states[:, :, :0].clone()
        self.sink_keys, self.sink_values = empty.clone(), value_states[:, :, :0].clone()
        self.is_initialized = True

    @property
    def packed_tokens(self) -> int:
        return self.packed_keys.tokens if self.packed_keys is not None else 0

    @property
    def stored_tokens(self) -> int:
        return self.sink_keys.shape[2] + self.packed_tokens - self.skip + self.keys.shape[2]

    @property
    def nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        dense = (self.sink_keys, self.sink_values, self.keys, self.values)
        total = sum(t.numel() * t.element_size() for t in dense)
        if self.packed_keys is not None:
            total += self.packed_keys.nbytes + self.packed_values.nbytes
        return total

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.fused and self.packed_tokens > self.skip:
            keys, values = self._full_precision(key_states, value_states)
        else:
            keys, values = self._assemble(key_states, value_states)
        self._append(key_states, value_states)
        return keys, values

    def _body_rope(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """RoPE tables for the packed body's positions, when its keys are stored before RoPE."""
        if not self.quantizer.pre_rope:
            return None, None
        body = self.packed_tokens - self.skip
        return self.rope.cos_sin(self.layer_idx, self.cumulative_length - self.keys.shape[2] - body, body, self.device)

    def _full_precision(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sinks, residual window and new tokens; the keys carry the packed body as it is now (before
        this call's tokens can flush into it) for `attention.py`."""
        keys = torch.cat([self.sink_keys, self.keys, key_states], dim=2)
        values = torch.cat([self.sink_values, self.values, value_states], dim=2)
        cos, sin = self._body_rope()
        body = PackedBody(
            keys=self.quantizer.keys.rows(self.packed_keys), values=self.quantizer.values.rows(self.packed_values),
            skip=self.skip, cos=cos, sin=sin, first_column=self.sink_keys.shape[2],
        )
        return tag(keys, body), values

    def _assemble(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sinks, dequantized body, residual window and the new tokens, in one buffer each."""
        if self.stored_tokens == 0:
            return key_states, value_states
        batch, heads, new, dim = key_states.shape
        sinks, body, recent = self.sink_keys.shape[2], self.packed_tokens - self.skip, self.keys.shape[2]
        total = sinks + body + recent + new
        keys = key_states.new_empty((batch, heads, total, dim))
        values = value_states.new_empty((batch, heads, total, value_states.shape[-1]))
        keys[:, :, :sinks], values[:, :, :sinks] = self.sink_keys, self.sink_values
        if body:
            cos, sin = self._body_rope()
            self.quantizer.keys.dequantize_into(keys, sinks, self.packed_keys, self.skip, cos, sin)
            self.quantizer.values.dequantize_into(values, sinks, self.packed_values, self.skip)
        keys[:, :, sinks + body : sinks + body + recent], values[:, :, sinks + body : sinks + body + recent] = (
            self.keys, self.values,
        )
        keys[:, :, total - new :], values[:, :, total - new :] = key_states, value_states
        return keys, values

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        start = self.cumulative_length
        self.cumulative_length += key_states.shape[2]
        room = self.sinks - self.sink_keys.shape[2] if start < self.sinks else 0
        if room > 0:
            self.sink_keys = torch.cat([self.sink_keys, key_states[:, :, :room]], dim=2)
            self.sink_values = torch.cat([self.sink_values, value_states[:, :, :room]], dim=2)
            key_states, value_states = key_states[:, :, room:], value_states[:, :, room:]
        self.keys = torch.cat([self.keys, key_states], dim=2)
        self.values = torch.cat([self.values, value_states], dim=2)
        block = self.quantizer.block
        flush = (self.keys.shape[2] - self.residual) // block * block
        if flush > 0:
            self._flush(flush)

    def _flush(self, count: int) -> None:
        """Quantize the oldest `count` tokens of the residual window into the packed body."""
        keys, values = self.keys[:, :, :count], self.values[:, :, :count]
        if self.quantizer.pre_rope:
            first = self.cumulative_length - self.keys.shape[2]
            keys = self.rope.unrotate(keys, self.layer_idx, first)
        packed_keys, packed_values = self.quantizer.keys.quantize(keys), self.quantizer.values.quantize(values)
        if self.packed_keys is None:
            self.packed_keys, self.packed_values = packed_keys, packed_values
        else:
            self.packed_keys = self.packed_keys.cat(packed_keys)
            self.packed_values = self.packed_values.cat(packed_values)
        self.keys, self.values = self.keys[:, :, count:], self.values[:, :, count:]

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` tokens (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        count = -tokens_to_remove
        if count == 0 or not self.is_initialized:
            return
        if count > self.stored_tokens:
            raise ValueError(f"cannot remove {count} tokens from a layer holding {self.stored_tokens}")
        self.cumulative_length -= count
        recent = min(count, self.keys.shape[2])
        self.keys, self.values = self.keys[:, :, : self.keys.shape[2] - recent], self.values[:, :, : self.values.shape[2] - recent]
        count -= recent
        body = min(count, self.packed_tokens - self.skip)
        if body:
            keep = self.packed_tokens - body
            self.packed_keys = self.packed_keys.slice(0, keep)
            self.packed_values = self.packed_values.slice(0, keep)
        count -= body
        if count:
            keep = self.sink_keys.shape[2] - count
            self.sink_keys, self.sink_values = self.sink_keys[:, :, :keep], self.sink_values[:, :, :keep]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("the quantized KV cache holds one sequence per batch row; beam search is not supported")

    batch_repeat_interleave = batch_select_indices = reorder_cache


class SlidingQuantizedKVLayer(QuantizedKVLayer):
    """A sliding-window layer: keeps at most `window - 1` past tokens, like `DynamicSlidingWindowLayer`."""

    is_sliding = True

    def __init__(self, *args, sliding_window: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.sliding_window = sliding_window

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        offset = max(self.cumulative_length - self.sliding_window + 1, 0)
        return min(self.cumulative_length, self.sliding_window - 1) + query_length, offset

    def get_max_length(self) -> int:
        return self.sliding_window

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super()._append(key_states, value_states)
        excess = self.stored_tokens - (self.sliding_window - 1)
        if excess <= 0:
            return
        sinks = min(excess, self.sink_keys.shape[2])
        self.sink_keys, self.sink_values = self.sink_keys[:, :, sinks:], self.sink_values[:, :, sinks:]
        excess -= sinks
        body = min(excess, self.packed_tokens - self.skip)
        self.skip += body
        excess -= body
        drop = self.skip // self.quantizer.block * self.quantizer.block
        if drop:
            self.packed_keys = self.packed_keys.slice(drop, self.packed_tokens)
            self.packed_values = self.packed_values.slice(drop, self.packed_values.tokens)
            self.skip -= drop
        if excess:  # a residual window longer than the sliding window
            self.keys, self.values = self.keys[:, :, excess:], self.values[:, :, excess:]

    def crop(self, tokens_to_remove: int) -> None:
        if self.cumulative_length >= self.sliding_window and tokens_to_remove:
            raise ValueError("a sliding-window layer past its window has dropped the tokens a rollback would need")
        super().crop(tokens_to_remove)


class QuantizedKVCache(Cache):
    """A `Cache` of quantized layers for a model config, one `KVQuantizer` per layer."""

    def __init__(self, config, quantizers: list[KVQuantizer], rope: RotaryTables | None, residual: int = 128, sinks: int = 1,
                 fused: bool = True):
        if residual < 0 or sinks < 0:
            raise TokeffError("--kv-residual and --kv-sinks must be >= 0")
        text_config = config.get_text_config(decoder=True)
        layer_types, layer_kwargs = get_layer_types_and_kwargs(text_config)
        if len(quantizers) != len(layer_types):
            raise TokeffError(f"{len(quantizers)} layer quantizers for a model with {len(layer_types)} layers")
        layers: list[QuantizedKVLayer] = []
        for index, (kind, kwargs, quantizer) in enumerate(zip(layer_types, layer_kwargs, quantizers)):
            common = dict(quantizer=quantizer, layer_idx=index, rope=rope, residual=residual, sinks=sinks, fused=fused)
            if kind == "full_attention":
                layers.append(QuantizedKVLayer(**common))
            elif kind == "sliding_attention":
                layers.append(SlidingQuantizedKVLayer(**common, sliding_window=kwargs["sliding_window"]))
            else:
                raise TokeffError(f"the quantized KV cache does not support '{kind}' layers")
        super().__init__(layers=layers)

    @property
    def nbytes(self) -> int:
        """Bytes of every layer's sinks, packed body (codes, ranges, outliers) and residual window."""
        return sum(layer.nbytes for layer in self.layers)
