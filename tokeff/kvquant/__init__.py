"""KV-cache quantization, one package: what `--kv-quant` names (`spec`), the quantizers
(`quantizer`), the quantized cache (`cache`) and the attention that reads its codes (`attention`),
and calibration: per layer, for keys and for values, the scheme of `schemes/` (KIVI's own recipe,
pre-RoPE ranges, fixed KVQuant ranges with outliers, k-means codebooks) that changes attention
output least on calibration text (`collect`, `fit`, `select`, `calibrate`), written as a `kvquant`
artifact (`artifact`). Decode methods import this package; it imports no decode method.

The argument checks live here, free of torch, so the command line rejects bad values at once.
"""

from tokeff.core.errors import TokeffError

SUPPORTED_BITS = (2, 3, 4)


def check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise TokeffError(f"--bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {bits}")
    return bits
