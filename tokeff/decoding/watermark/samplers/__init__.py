"""Each scheme's generation side (token chooser, logits processor), apart from its key and test in `schemes/`.

Detection needs no transformers, and for kgw and exp no torch, so a detection worker (a Ray actor) starts
without importing them (synthid's sampling table is a torch draw).
"""
