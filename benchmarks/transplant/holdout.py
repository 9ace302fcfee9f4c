"""Benchmark: how well each estimator rebuilds base rows it could have known (held-out shared tokens).

Shared tokens have a true base row. Holding some out (they become targets; the rest stay anchors)
measures an estimator without running a model: cosine and relative error of the estimated row
against the true one, also weighted by how often each token occurs in WikiText. Compared: the mean
row, hybrid's similarity-weighted neighbours, OMP over all anchors (mergekit-tokensurgeon's
search) and tokeff's OMP over each token's nearest candidates, at several k.

    PYTHONPATH=. python benchmarks/transplant/holdout.py [--pairs gemma3-270m:smollm2-135m,...] [--held-out 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"


def embeddings(name: str) -> torch.Tensor:
    from tokeff.core.resolve import model_folder
    from tokeff.surgery.transplant.checkpoint import Checkpoint, embedding_layout

    folder = model_folder(name)
    checkpoint = Checkpoint(folder)
    return checkpoint.read(embedding_layout(folder, checkpoint).embed).float()


def run_pair(base: str, donor: str, held_out: int, ks: list[int], seed: int) -> dict:
    from tokeff.core.models import load_tokenizer
    from tokeff.kernels.anchors import nearest_anchors
    from tokeff.kernels.omp import omp, omp_candidates
    from tokeff.surgery.transplant.estimators import ESTIMATORS
    from tokeff.surgery.transplant.vocab import match_vocabularies

    donor_tokenizer = load_tokenizer(donor)
    match = match_vocabularies(load_tokenizer(base), donor_tokenizer)
    # How often each donor token occurs in the first half of WikiText (the weights of the weighted cosine).
    text = DATA.read_text()
    text = text[: len(text) // 2]
    counts = np.bincount(donor_tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"], minlength=match.donor_rows)
    shared = match.shared_ids
    seen = shared[counts[shared] > 0]
    held = np.random.default_rng(seed).choice(seen, size=min(held_out, len(seen)), replace=False)
    keep = np.setdiff1d(shared, held)
    base_rows, donor_rows = embeddings(base), embeddings(donor)
    targets, anchors = donor_rows[torch.from_numpy(held)], donor_rows[torch.from_numpy(keep)]
    truth, anchor_rows = base_rows[torch.from_numpy(match.base_row[held])], base_rows[torch.from_numpy(match.base_row[keep])]
    weight = torch.from_numpy(counts[held]).float()
    # The methods' own defaults, from their option specs.
    temperature = ESTIMATORS.get("hybrid")(k=64).opts["temperature"]
    default_candidates = ESTIMATORS.get("omp")().opts["candidates"]

    def scored(name: str, estimate: torch.Tensor, seconds: float) -> dict:
        cosine = torch.nn.functional.cosine_similarity(estimate, truth, dim=1)
        error = (estimate - truth).norm(dim=1) / truth.norm(dim=1)
        row = {"estimator": name, "cosine": float(cosine.mean()), "weighted_cosine": float((cosine * weight).sum() / weight.sum()),
               "relative_error": float(error.mean()), "seconds": seconds}
        print(f"{base} <- {donor} {name}: {row}", file=sys.stderr)
        return row

    rows = [scored("mean row", base_rows.mean(0, keepdim=True).expand_as(truth), 0.0)]
    started = time.perf_counter()
    nearest, similarity = nearest_anchors(targets, anchors, 64)
    softmax = torch.softmax(similarity / temperature, dim=1)
    rows.append(scored("hybrid's global part (softmax of 64 nearest)", (softmax.unsqueeze(2) * anchor_rows[nearest]).sum(1), time.perf_counter() - started))
    for k in ks:
        started = time.perf_counter()
        picked, coefficients = omp(targets, anchors, k)
        rows.append(scored(f"OMP over all {len(keep):,} anchors, k={k}", (coefficients.unsqueeze(2) * anchor_rows[picked]).sum(1), time.perf_counter() - started))
        started = time.perf_counter()
        width = max(default_candidates, 4 * k)
        candidates, _ = nearest_anchors(targets, anchors, width, absolute=True)
        picked, coefficients = omp_candidates(targets, anchors, candidates, k)
        estimate = (coefficients.unsqueeze(2) * anchor_rows[candidates.gather(1, picked)]).sum(1)
        rows.append(scored(f"tokeff OMP over {width} nearest, k={k}", estimate, time.perf_counter() - started))
    return {"base": base, "donor": donor, "held_out": len(held), "anchors": len(keep), "rows": rows}


def write_doc(results: list[dict], command: str) -> None:
    docs = ROOT / "docs"
    (docs / "transplant-holdout.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# tokeff transplant: estimators on held-out shared tokens", "",
             f"Reproduce: `{command}` (2 shared CPU cores, 1 torch thread).",
             "Shared tokens held out (drawn among those that occur in the first half of wikitext2-valid.txt) are estimated "
             "from the remaining anchors and compared with their true base rows. Weighted cosine weights each token by its "
             "count in that text. Higher cosine and lower error are better.", ""]
    for pair in results:
        lines += [f"## {pair['base']} given {pair['donor']}'s tokenizer ({pair['held_out']:,} held out, {pair['anchors']:,} anchors)", "",
                  "| estimator | cosine | weighted cosine | relative error | seconds |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['estimator']} | {r['cosine']:.3f} | {r['weighted_cosine']:.3f} | {r['relative_error']:.3f} | {r['seconds']:.1f} |" for r in pair["rows"]]
        lines.append("")
    (docs / "transplant-holdout.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default="gemma3-270m:smollm2-135m,smollm2-135m:gemma3-270m")
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--k", default="8,32,64")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [run_pair(*pair.split(":"), args.held_out, [int(k) for k in args.k.split(",")], args.seed) for pair in args.pairs.split(",")]
    write_doc(results, "PYTHONPATH=. python benchmarks/transplant/holdout.py " + " ".join(sys.argv[1:]))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
