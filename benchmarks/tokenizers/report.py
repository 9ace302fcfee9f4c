"""docs/tokenizers.md from docs/tokenizers.json (written by run.py; every number here comes from it)."""

from __future__ import annotations

CORPORA = ("wikitext", "shakespeare")
REFERENCE = "smollm2-135m"  # token counts are compared with this model's own tokenizer


def render(record: dict) -> str:
    parts = [_header(record), _tokenizers(record), _transplant(record), _dynamic(record), _reproduce(record)]
    return "\n".join(part for part in parts if part)


def _header(record: dict) -> str:
    data = record["data"]
    splits = ", ".join(
        f"`{info['file']}` ({info['train_bytes']:,} bytes train / {info['eval_bytes']:,} bytes measured)"
        for info in data.values()
    )
    return f"""# Supertoken and dynamic tokenizers: what they save

Data: the first {record['train_fraction']:.0%} of each file (cut at a line boundary) trains the tokenizers,
the rest is what is measured, never the same bytes: {splits}.
Machine: a shared 2-core CPU, torch on {record.get('threads', 1)} thread(s); times are noisy and only
side-by-side ratios are meaningful. All numbers below were measured by `benchmarks/tokenizers/run.py`
(raw results in `docs/tokenizers.json`).
"""


def _rows(record: dict) -> list[dict]:
    return record["tokenizers"]["rows"]


def _tokenizers(record: dict) -> str:
    if "tokenizers" not in record:
        return ""
    rows = [row for row in _rows(record) if "error" not in row]
    reference = next(row for row in rows if row["tokenizer"] == REFERENCE)
    lines = [
        "## Bytes per token",
        "",
        f"Own tokenizers of the built-in models against byte-level BPEs trained by `tokeff tokenizer train` on "
        f"{record['tokenizers']['train_bytes']:,} bytes (both training parts together). `tokens vs smollm2` is the "
        "token count relative to smollm2-135m's own tokenizer on the same text (lower is shorter); "
        "`multi-word` is the share of tokens that span a word boundary. Every tokenizer decoded its "
        "encoding back to the exact text" + ("" if all(row[c]["lossless"] for row in rows for c in CORPORA) else
                                             " except those marked lossless = no") + ".",
        "",
        "| tokenizer | vocab | stage 1 | " + " | ".join(
            f"{c} bytes/token | {c} tokens vs smollm2 | {c} multi-word" for c in CORPORA) + " | train s |",
        "|---|---:|---:|" + "---:|---:|---:|" * len(CORPORA) + "---:|",
    ]
    for row in rows:
        cells = [row["tokenizer"], f"{row['vocab_size']:,}", _stage1(row)]
        for corpus in CORPORA:
            stats = row[corpus]
            cells += [f"{stats['bytes_per_token']:.3f}", f"{stats['tokens'] / reference[corpus]['tokens']:.3f}",
                      f"{stats['multiword_fraction']:.1%}" + ("" if stats["lossless"] else " (lossless = no)")]
        cells.append(f"{row['train_seconds']:.1f}" if "train_seconds" in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    for row in _rows(record):
        if "error" in row:
            lines.append(f"\n{row['tokenizer']} (vocab {row['vocab_size']:,}) was not trained: {row['error']}")
    lines += ["", "![bytes per token against vocabulary size](tokenizers-vocab.png)", "", _supertoken_claim(rows)]
    return "\n".join(lines) + "\n"


def _stage1(row: dict) -> str:
    return f"{row['stage1_merges']:,} merges" if row.get("stage1_merges") else "-"


def _supertoken_claim(rows: list[dict]) -> str:
    """Supertoken against plain BPE of the same size, next to SuperBPE's published mark."""
    plain = {row["vocab_size"]: row for row in rows if row["tokenizer"].startswith("plain-")}
    pairs = [(row, plain[row["vocab_size"]]) for row in rows
             if row["tokenizer"].startswith("supertoken-") and row["vocab_size"] in plain]
    if not pairs:
        return ""
    lines = [
        "### Supertokens against plain BPE of the same vocabulary",
        "",
        "| supertoken tokenizer | stage 1 | " + " | ".join(f"{c}: fewer tokens than plain" for c in CORPORA) + " |",
        "|---|---:|" + "---:|" * len(CORPORA),
    ]
    best = 0.0
    for super_row, plain_row in pairs:
        cuts = [1 - super_row[c]["tokens"] / plain_row[c]["tokens"] for c in CORPORA]
        best = max(best, *cuts)
        lines.append(f"| {super_row['tokenizer']} | {_stage1(super_row)} | " + " | ".join(f"{cut:.1%}" for cut in cuts) + " |")
    lines += [
        "",
        f"Published mark (SuperBPE): up to 33% fewer tokens than BPE at a 200k vocabulary. Here, with vocabularies "
        f"of at most {max(row['vocab_size'] for row, _ in pairs):,} trained on about 2 MB, the largest cut measured "
        f"is {best:.1%}.",
    ]
    return "\n".join(lines) + "\n"


def _transplant(record: dict) -> str:
    section = record.get("transplant")
    if section is None:
        return ""
    if section["status"] != "measured":
        return (
            "## smollm2-135m transplanted into the supertoken tokenizer\n\n"
            f"Not measured: {section['status']}. Once it is, `python benchmarks/tokenizers/run.py --parts transplant` "
            "gives smollm2-135m the `supertoken-16384` tokenizer trained above (`tokeff transplant smollm2-135m "
            "--donor TOKENIZER --donor-tokenizer-only --method subword|mean`) and scores it zero-shot here.\n"
        )
    lines = [
        "## smollm2-135m transplanted into the supertoken tokenizer (zero-shot)",
        "",
        f"Bits per byte on {section['eval_bytes']:,} held-out bytes of WikiText-2, windows of 512 tokens.",
        "",
        "| model | tokens | bytes/token | bits per byte |",
        "|---|---:|---:|---:|",
    ]
    for row in section["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | failed: {row['error'][:200]} | | |")
        else:
            lines.append(f"| {row['model']} | {row['tokens']:,} | {row['bytes'] / row['tokens']:.3f} | {row['bpb']:.4f} |")
    return "\n".join(lines) + "\n"


def _dynamic(record: dict) -> str:
    section = record.get("dynamic")
    if section is None:
        return ""
    lines = [
        "## Dynamic tokenization (`tokeff dynamic`)",
        "",
        f"{section['model']} on {section['eval_bytes']:,} held-out bytes of WikiText-2, cut into segments of "
        f"{section['context']} of the model's own tokens; the segments are the batch the merges are learned on. "
        "New tokens get the mean of their pieces' input embeddings (unless noted) and probabilities from the "
        "extended output layer, so bits per byte stays comparable. `bpb change` is against the model's own "
        "tokenization of the same segments; `+ merge table` adds the bits needed to send the merges "
        "(2 log2(V+K) per merge). In prefill mode the first half of each segment is merged (merges learned "
        "on those halves only) and only the second half is scored, in the model's own tokens, as "
        "`tokeff decode --method dynamic` uses it.",
        "",
        f"The batch is small so that this part ran in {record.get('part_seconds', {}).get('dynamic', 0) / 60:.0f} "
        "minutes on the shared machine; merges need pairs seen at least twice in the batch, so a larger batch "
        "(the paper's setting) allows more merges than measured here.",
        "",
        "| run | merges | length reduction | own bpb | dynamic bpb | bpb change | + merge table | at new tokens | model s (own / dynamic) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in section["runs"]:
        for row in distinct(run["results"]):
            new = "-" if row["new_token_bpb_change"] is None else f"{row['new_token_bpb_change']:+.4f}"
            lines.append(
                f"| {run['label']} | {row['merges']:,} | {row['length_reduction']:.1%} | {row['base_bpb']:.4f} | "
                f"{row['dynamic_bpb']:.4f} | {row['bpb_change']:+.4f} | {row['bpb_change'] + row['merge_table_bpb']:+.4f} | "
                f"{new} | {row['base_seconds']:.1f} / {row['dynamic_seconds']:.1f} |"
            )
    best = max((row for run in section["runs"] for row in run["results"]), key=lambda row: row["length_reduction"])
    capped = [run["label"] for run in section["runs"] if len(distinct(run["results"])) < len(run["results"])]
    lines += [
        "",
        *([f"Runs that learned fewer merges than asked ({'; '.join(capped)}) ran out of pairs seen at least twice "
           "in the batch; each distinct merge count is listed once.", ""] if capped else []),
        "![length reduction and bits-per-byte cost against merges](tokenizers.png)",
        "",
        "Published mark (dynamic tokenization paper): up to 40% shorter prefill with little loss on 7B models "
        f"(with a trained embedding hypernetwork). Here, with training-free embeddings on a 135M model, the largest length reduction measured is "
        f"{best['length_reduction']:.1%} ({best['merges']:,} merges), at a bits-per-byte change of "
        f"{best['bpb_change']:+.4f} ({best['bpb_change'] / best['base_bpb']:+.1%} of the model's own "
        f"{best['base_bpb']:.4f}).",
    ]
    return "\n".join(lines) + "\n"


def distinct(results: list[dict]) -> list[dict]:
    """A run's results without repeats: asking for more merges than the batch has pairs gives the same row."""
    seen, out = set(), []
    for row in results:
        if row["merges"] not in seen:
            seen.add(row["merges"])
            out.append(row)
    return out


def _reproduce(record: dict) -> str:
    commands = record.get("commands", {})
    seconds = record.get("part_seconds", {})
    lines = ["## Reproduce", "", "From the repository root:", "", "```"]
    lines += [command for command in commands.values()]
    lines += ["```", ""]
    lines += [f"- {part}: {seconds[part]:.0f} s wall" for part in commands if part in seconds]
    return "\n".join(lines) + "\n"
