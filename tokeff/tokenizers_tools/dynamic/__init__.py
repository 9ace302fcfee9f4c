"""Dynamic tokenization: batch-level BPE merges with training-free embeddings and an extended output head."""
