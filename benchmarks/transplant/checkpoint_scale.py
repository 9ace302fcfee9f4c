"""Benchmark: `tokeff transplant` on a checkpoint of a current open model's shape, made locally.

The helper writes a random-weight Llama the shape of Llama 3.2 1B with an untied head: a
128,256-token byte-level BPE (trained here on the shared WikiText and Shakespeare text), hidden
2048, intermediate 8192, 32 heads (8 KV heads), `--layers` layers (11: about 1.2B parameters),
bf16, in shards of at most `--shard-mib` with `model.safetensors.index.json`. Nothing is downloaded.
It then transplants smollm2-135m's tokenizer into it (`--method omp`) in a subprocess, for each
`--new-scale` given (wall time and peak RSS under /usr/bin/time), checks the output (bf16, the
base's shard layout and index, the untied head's own estimated rows, `tokeff verify`, a stock
`from_pretrained`), writes docs/transplant-scale.json and .png and the "Checkpoint scale" section
of docs/transplant.md, and deletes the checkpoints.

    PYTHONPATH=. python benchmarks/transplant/checkpoint_scale.py [--layers 11] [--new-scales 1,auto] [--docs-out docs]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, timed  # noqa: E402  (the transplant benchmark's timing harness)

DATA = ROOT.parent / "shared" / "data"
VOCAB, HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = 128_256, 2048, 8192, 32, 8
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]
SECTION = "## Checkpoint scale"


def train_tokenizer(folder: Path, vocab_size: int = VOCAB) -> int:
    """A byte-level BPE of `vocab_size` tokens (Llama 3's size), BOS added like Llama 3's; returns its BPE tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    text = "".join((DATA / name).read_text(encoding="utf-8") for name in ("wikitext2-valid.txt", "tinyshakespeare.txt"))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
    # Short of merges (a 2 MB text), the rest of the vocabulary is reserved special tokens, as in Llama 3.
    missing = vocab_size - tokenizer.get_vocab_size()
    tokenizer.add_special_tokens([f"<|reserved_special_token_{i}|>" for i in range(missing)])
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{SPECIALS[0]} $A", special_tokens=[(SPECIALS[0], 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIALS[0], eos_token=SPECIALS[1])
    fast.save_pretrained(folder)
    return tokenizer.get_vocab_size() - missing


def shapes(layers: int, vocab: int = VOCAB) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Llama, in checkpoint order (embedding first, head last)."""
    head_dim = HIDDEN // HEADS
    out = {"model.embed_tokens.weight": (vocab, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (KV_HEADS * head_dim, HIDDEN),
                p + "self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN), p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE), p + "input_layernorm.weight": (HIDDEN,),
                p + "post_attention_layernorm.weight": (HIDDEN,)}
    return out | {"model.norm.weight": (HIDDEN,), "lm_head.weight": (vocab, HIDDEN)}


def write_checkpoint(folder: Path, layers: int, shard_bytes: int, vocab: int = VOCAB) -> dict:
    """Random bf16 weights (std 0.02; norms 1) in shards of at most `shard_bytes`, with the index."""
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    real_tokens = train_tokenizer(folder, vocab)
    LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=8192,
                rope_theta=500_000.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
                architectures=["LlamaForCausalLM"],
                torch_dtype="bfloat16").to_json_file(folder / "config.json")
    groups, size = [[]], 0
    for name, shape in shapes(layers, vocab).items():
        nbytes = 2 * torch.Size(shape).numel()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    generator = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for index, group in enumerate(groups, 1):
        file = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: torch.ones(shape, dtype=torch.bfloat16) if len(shape) == 1 else
                   (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16) for name, shape in group}
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map |= {name: file for name in tensors}
        total += sum(t.numel() for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": 2 * total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    largest = max((folder / f).stat().st_size for f in set(weight_map.values()))
    return {"parameters": total, "vocab": vocab, "layers": layers, "shards": len(groups), "bpe_tokens": real_tokens,
            "largest_shard_mib": largest / 2**20, "embedding_mib": 2 * vocab * HIDDEN / 2**20,
            "head_mib": 2 * vocab * HIDDEN / 2**20, "checkpoint_mib": 2 * total / 2**20}


def check_output(base: Path, out: Path) -> dict:
    """What the output kept: dtypes, shard files, the untied head's own rows; verify; stock loading."""
    from transformers import AutoModelForCausalLM

    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    dtypes = set()
    for file in files:
        with safe_open(out / file, "pt") as stream:
            dtypes |= {stream.get_slice(name).get_dtype() for name in stream.keys()}
    with safe_open(out / index["weight_map"]["lm_head.weight"], "pt") as stream:
        head = stream.get_tensor("lm_head.weight")
    with safe_open(out / index["weight_map"]["model.embed_tokens.weight"], "pt") as stream:
        embed = stream.get_tensor("model.embed_tokens.weight")
    verify = subprocess.run([sys.executable, "-m", "tokeff", "verify", str(out)], capture_output=True, text=True)
    model = AutoModelForCausalLM.from_pretrained(out, torch_dtype="auto")
    base_files = sorted(set(json.loads((base / "model.safetensors.index.json").read_text())["weight_map"].values()))
    return {"dtypes": sorted(dtypes), "same_shard_files": files == base_files, "shards": len(files),
            "head_rows_differ_from_embedding": not torch.equal(head, embed), "rows": head.shape[0],
            "verify_ok": verify.returncode == 0 and verify.stdout.strip().endswith("ok"),
            "from_pretrained_dtype": str(model.dtype).removeprefix("torch.")}


def write_doc(results: dict, command: str, docs: Path) -> None:
    from tokeff.core.reporting import Bars, Panel, plot_panels

    (docs / "transplant-scale.json").write_text(json.dumps(results, indent=2) + "\n")
    ckpt = results["checkpoint"]
    bound = results["bound_mib"]
    rows = results["runs"]
    plot_panels(docs / "transplant-scale.png", [Panel(
        "", "MiB", f"transplant of a {ckpt['parameters'] / 1e9:.2f}B bf16 checkpoint: peak RSS",
        bars=Bars([f"--new-scale {r['new_scale']}" for r in rows] + ["bound"],
                  [r["peak_rss_mib"] or 0 for r in rows] + [bound]), guides=[bound])])
    lines = [SECTION, "",
             f"Reproduce: `{command}` (2 shared CPU cores, under `flock /tmp/tokeff-bench.lock`). A random-weight Llama "
             f"made locally: {ckpt['parameters'] / 1e9:.3f}B parameters, vocabulary {ckpt['vocab']:,} (a byte-level BPE of "
             f"{ckpt['bpe_tokens']:,} tokens trained on the shared text, the rest reserved special tokens), hidden {HIDDEN}, "
             f"{ckpt['layers']} layers, untied head, bf16, {ckpt['shards']} shards ({ckpt['checkpoint_mib']:,.0f} MiB, "
             f"largest {ckpt['largest_shard_mib']:,.0f} MiB), with its index. Donor: smollm2-135m's tokenizer, `--method omp`. "
             f"Bound from issue 15: embedding + head + largest shard + 1 GiB = {bound:,.0f} MiB.", "",
             "| new-row scale | wall s | peak RSS MiB | within bound | output dtypes | shards kept | head own rows | verify | from_pretrained |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c = r.get("check", {})
        rss = f"{r['peak_rss_mib']:,.0f}" if r.get("peak_rss_mib") else "-"
        within = "-" if not r.get("peak_rss_mib") else ("yes" if r["peak_rss_mib"] <= bound else "no")
        lines.append(f"| {r['new_scale']} (chose {r.get('chosen', '-')}) | {r['seconds']:.1f} | {rss} | {within} | "
                     f"{','.join(c.get('dtypes', ['-']))} | {c.get('same_shard_files', '-')} | "
                     f"{c.get('head_rows_differ_from_embedding', '-')} | {c.get('verify_ok', '-')} | {c.get('from_pretrained_dtype', '-')} |"
                     + ("" if r["rc"] == 0 else f" failed: exit {r['rc']} |"))
    lines += ["", "![peak RSS against the bound](transplant-scale.png)", ""]
    doc = docs / "transplant.md"
    text = doc.read_text()
    section = "\n".join(lines)
    if SECTION in text:  # replace the section up to the next heading of the same level
        text = re.sub(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", section.rstrip("\n") + "\n", text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--vocab", type=int, default=VOCAB, help="smaller for a quick check of the script")
    parser.add_argument("--shard-mib", type=int, default=640)
    parser.add_argument("--new-scales", default="1,auto", help="one transplant per value")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--docs-out", type=Path, default=ROOT / "docs", help="folder of transplant.md (a copy for a quick check)")
    parser.add_argument("--workdir", default=None, help="where the checkpoints go (default: a temp dir, deleted after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tokeff-ckpt-scale-", dir=args.workdir) as work:
        base = Path(work) / "base"
        checkpoint = write_checkpoint(base, args.layers, args.shard_mib * 2**20, args.vocab)
        print(json.dumps(checkpoint), file=sys.stderr)
        runs = []
        for value in args.new_scales.split(","):
            out = Path(work) / f"out-{value}"
            row = {"new_scale": value, **timed([sys.executable, "-m", "tokeff", "transplant", str(base), "--donor", "smollm2-135m",
                                                "--method", "omp", "--new-scale", value, "-o", str(out), "--json"], args.timeout)}
            if row["rc"] == 0:
                metrics = json.loads((out / "tokeff.json").read_text())["metrics"]
                row["chosen"] = (metrics.get("new_scale") or {}).get("value")
                row["vocabulary"] = metrics["vocabulary"]
                row["tokeff_peak_rss_mib"] = metrics["peak_rss_mib"]
                row["check"] = check_output(base, out)
            runs.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "tail"}), file=sys.stderr)
            subprocess.run(["rm", "-rf", str(out)], check=True)
    bound = checkpoint["embedding_mib"] + checkpoint["head_mib"] + checkpoint["largest_shard_mib"] + 1024
    command = "PYTHONPATH=. python benchmarks/transplant/checkpoint_scale.py " + " ".join(sys.argv[1:])
    write_doc({"checkpoint": checkpoint, "bound_mib": bound, "runs": runs, "command": command}, command.strip(), args.docs_out)


if __name__ == "__main__":
    main()
