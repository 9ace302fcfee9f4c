"""Offline weight transforms that write model artifacts (tokenizer transplant, KV-cache calibration)."""
