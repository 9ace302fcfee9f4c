"""Quantized KV cache: low-bit packed keys and values (calibrated or uniform), a full-precision
residual window and attention-sink tokens, behind transformers' `Cache` interface."""
