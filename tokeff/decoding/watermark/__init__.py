"""Text watermarks: keys, watermarked generation, detection and evaluation.

Each scheme is one module in `schemes/` (the interface: `scheme.py`), keyed by a `watermark-key`
artifact (`keys.py`) that records every parameter:

- `exp` (Kuditipudi et al., "Robust Distortion-free Watermarks for Language Models"): the key is a
  sequence of n random vectors; position i of a generation uses vector (offset + i) mod n and picks
  the token by exponential-minimum sampling, which leaves the text distribution unchanged.
  Detection aligns the text to the key with an edit-tolerant dynamic program
  (`tokeff/kernels/exp_alignment.py`) and calibrates it with a Monte Carlo test against random keys.
- `kgw` (Kirchenbauer et al., "A Watermark for Large Language Models"): the previous tokens seed a
  green list that gets a logit bias; detection counts green tokens (exact binomial tail). With
  `hashing` lefthash/selfhash its green lists are transformers' own.
- `synthid` (SynthID-Text, Dathathri et al.): tournament sampling with transformers' hashing;
  detection is a Monte Carlo test on the mean g-value, and `bayesian.py` offers the paper's trained
  Bayesian detector as an extra.

Keys convert to and from transformers' watermarking configs (`from_transformers`, `to_transformers`
on each scheme), so text watermarked by either library is detected by the other.

Only modules under this package import torch-heavy code, and this file imports nothing, so the
decode registry's auto-discovery of `tokeff.decoding` stays cheap.
"""
