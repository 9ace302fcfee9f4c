"""What `--kv-quant` names: a calibrated `kvquant` artifact folder, or `uniform:BITS` (the KIVI
recipe, no calibration: keys per channel over groups of tokens after RoPE, values per token)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.kvquant.attention import install as install_packed_attention
from tokeff.kvquant.cache import QuantizedKVCache
from tokeff.kvquant.quantizer import KVQuantizer, uniform_codebook
from tokeff.kvquant import check_bits

DEFAULT_RESIDUAL = 128
DEFAULT_SINKS = 1


def uniform_quantizers(n_layers: int, bits: int, head_dim: int) -> list[KVQuantizer]:
    """Every layer with the registry's KIVI schemes at their defaults (`schemes.BASELINE`), even levels."""
    from tokeff.kvquant.schemes import BASELINE, SCHEMES, Fitted

    keys, values = SCHEMES.get(BASELINE["keys"]), SCHEMES.get(BASELINE["values"])
    fitted = Fitted(uniform_codebook(bits))
    layer = KVQuantizer(
        keys=keys.quantizer(bits, fitted, keys.settings(), head_dim),
        values=values.quantizer(bits, fitted, values.settings(), head_dim),
        pre_rope=keys.pre_rope,
    )
    return [layer] * n_layers


def kv_cache_factory(
    spec: str, lm: LoadedModel, residual: int = DEFAULT_RESIDUAL, sinks: int = DEFAULT_SINKS, fused: bool = True
) -> Callable[[], QuantizedKVCache]:
    """A function returning a fresh quantized cache for `lm` each time (one per sequence).

    `fused` attends the packed tokens straight from their codes (`attention.py`, which this installs
    as `lm`'s attention); otherwise every call dequantizes them into a float buffer first."""
    config = lm.model.config.get_text_config(decoder=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 8:
        raise TokeffError(f"{lm.spec}: head dimension {head_dim} is not a multiple of 8, which packed codes need")
    if residual < 0 or sinks < 0:
        raise TokeffError(f"--kv-residual and --kv-sinks must be >= 0, got {residual} and {sinks}")
    if spec.startswith("uniform"):
        kind, _, bits = spec.partition(":")
        if kind != "uniform" or not bits.isdigit():
            raise TokeffError(f"--kv-quant {spec}: expected uniform:BITS, e.g. uniform:4")
        quantizers = uniform_quantizers(config.num_hidden_layers, check_bits(int(bits)), head_dim)
        rope = None
    else:
        from tokeff.kvquant.artifact import load_calibration

        if not Path(spec).exists():
            raise TokeffError(f"--kv-quant {spec}: no such artifact (give a `tokeff kvquant calibrate` output or uniform:BITS)")
        quantizers = load_calibration(spec, lm).quantizers()
        rope = lm.rotary
        rope.check_tables()
    fused = fused and install_packed_attention(lm.model)
    return lambda: QuantizedKVCache(lm.model.config, quantizers, rope, residual=residual, sinks=sinks, fused=fused)
