"""KV-cache quantization, one package: what `--kv-quant` names (`spec`), the quantizers
(`quantizer`), the quantized cache (`cache`) and the attention that reads its codes (`attention`),
and calibration (KVQuant: pre-RoPE key ranges, outlier thresholds and per-layer non-uniform
codebooks fitted on calibration text; `collect`, `fit`, `calibrate`), written as a `kvquant`
artifact (`artifact`). Decode methods import this package; it imports no decode method.

The argument checks live here, free of torch, so the command line rejects bad values at once.
"""

from tokeff.core.errors import TokeffError

SUPPORTED_BITS = (2, 3, 4)


def check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise TokeffError(f"--bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {bits}")
    return bits


def check_outliers(fraction: float) -> float:
    if not 0 <= fraction < 0.5:
        raise TokeffError(f"--outliers is a fraction in [0, 0.5), got {fraction}")
    return fraction


def check_key_group(tokens: int) -> int:
    if tokens < 0:
        raise TokeffError(f"--key-group must be >= 0 (0: fixed calibrated key ranges), got {tokens}")
    return tokens
