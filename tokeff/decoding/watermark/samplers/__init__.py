"""Each scheme's generation side (token chooser, logits processor), apart from its key and test in `schemes/`.

Detection needs neither torch nor transformers, so a detection worker (a Ray actor) starts without importing them.
"""
