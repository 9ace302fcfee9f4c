"""How much a quantizer changes one layer's attention output on calibration activations, the measure
calibration chooses each layer's schemes by.

For every sample, the layer's recorded queries attend the full-precision sink and the body of keys
and values, one of the two replaced by its quantized round trip except for the `residual` tokens
just before each query (the cache keeps its most recent tokens exact, and they draw much of the
attention, so errors there would mislead the choice); the error is the squared change of the
attention output relative to its squared norm, summed over samples. Keys are compared after RoPE
(what attention sees), whichever side of the rotation a scheme quantizes them on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokeff.core.rope import RotaryTables
from tokeff.kvquant.collect import Activations
from tokeff.kvquant.quantizer import TensorQuantizer


@dataclass
class LayerAttention:
    """One layer's calibration attention, every sample's body cut to `tokens` (a multiple of every
    candidate's block, so that no quantizer sees a partial group)."""

    acts: Activations
    layer: int
    rope: RotaryTables
    tokens: int
    residual: int = 0

    def __post_init__(self) -> None:
        n, layer, acts = self.tokens, self.layer, self.acts
        self.pre_keys = [k[None, :, :n] for k in acts.keys[layer]]
        self.post_keys = [self.rope.rotate(k, layer, 1) for k in self.pre_keys]
        self.values = [v[None, :, :n] for v in acts.values[layer]]
        residual = self.residual
        # exact[i, j]: key column j (the sink first) stays full precision for query i (body token i)
        distance = torch.arange(n)[:, None] - torch.arange(-1, n)[None, :]
        self.exact = (distance < residual) | (torch.arange(n + 1) == 0)[None, :]
        self.reference = [self._attend(i, self.post_keys[i], self.values[i]) for i in range(len(self.values))]
        self.reference_norm = max(sum(float(ref.square().sum()) for ref in self.reference), 1e-30)

    def _attend(self, sample: int, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Output [1, q_heads, tokens, dim] with quantized body `keys`/`values` where not `exact`."""
        acts, layer, n = self.acts, self.layer, self.tokens
        sink_keys = self.rope.rotate(acts.sink_keys[layer][sample][None], layer, 0)
        sink_values = acts.sink_values[layer][sample][None]
        query = acts.queries[layer][sample][None, :, :n]
        groups = query.shape[1] // sink_keys.shape[1]

        def expand(x: torch.Tensor) -> torch.Tensor:
            return x.float().repeat_interleave(groups, 1)

        exact_k, exact_v = (expand(torch.cat([s, x], 2)) for s, x in ((sink_keys, self.post_keys[sample]),
                                                                       (sink_values, self.values[sample])))
        quant_k, quant_v = expand(torch.cat([sink_keys, keys], 2)), expand(torch.cat([sink_values, values], 2))
        scores = torch.where(self.exact, query @ exact_k.transpose(-1, -2), query @ quant_k.transpose(-1, -2))
        visible = acts.masks[layer][sample][:n, : n + 1]
        probs = torch.softmax((scores * acts.scaling[layer]).masked_fill(~visible, -torch.inf), -1)
        return (probs * self.exact) @ exact_v + (probs * ~self.exact) @ quant_v

    def _error(self, outputs: list[torch.Tensor]) -> float:
        change = sum(float((out - ref).square().sum()) for out, ref in zip(outputs, self.reference))
        return change / self.reference_norm  # the reference's norm, summed once per layer

    def key_error(self, quantizer: TensorQuantizer, pre_rope: bool) -> float:
        """Relative attention-output error with the body keys quantized (before or after RoPE)."""
        if pre_rope:
            keys = [self.rope.rotate(quantizer.roundtrip(k), self.layer, 1) for k in self.pre_keys]
        else:
            keys = [quantizer.roundtrip(k) for k in self.post_keys]
        return self._error([self._attend(i, k, v) for i, (k, v) in enumerate(zip(keys, self.values))])

    def value_error(self, quantizer: TensorQuantizer) -> float:
        """Relative attention-output error with the body values quantized."""
        values = [quantizer.roundtrip(v) for v in self.values]
        return self._error([self._attend(i, k, v) for i, (k, v) in enumerate(zip(self.post_keys, values))])

    def bytes_per_token(self, quantizer: TensorQuantizer, tensor: str) -> float:
        """Packed bytes per token of `tensor` ("keys" or "values") of the first sample under `quantizer`."""
        x = (self.pre_keys if tensor == "keys" else self.values)[0]
        return quantizer.quantize(x).nbytes / self.tokens
