"""KV-cache calibration (KVQuant): pre-RoPE key ranges, outlier thresholds and per-layer
non-uniform codebooks fitted on calibration text, written as a `kvquant` artifact."""
