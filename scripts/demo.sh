#!/usr/bin/env bash
# End-to-end demo of the main jobs on the two built-in models; `make demo` runs it after set-up.
# Each step prints the figure it exists for. About 2 minutes on 2 CPU cores (models already converted).
set -euo pipefail
DATA="${DATA:-../shared/data}"
WIKI="$DATA/wikitext2-valid.txt"
WORK="$(mktemp -d -t tokeff-demo-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
# figure FILE EXPRESSION: evaluate a Python expression over the JSON in FILE (bound to `j`) and print it.
figure() { python -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# Held-out text from the middle of WikiText-2, cut at a line end (or a space, inside a long paragraph).
python - "$WIKI" "$WORK" <<'EOF'
import sys
text = open(sys.argv[1], encoding="utf-8").read()
middle = text[len(text) // 2:]
middle = middle[middle.index("\n") + 1:]
def cut(start, size):
    piece = middle[start:start + size]
    end = piece.rindex("\n") + 1
    return piece[:end] if end > size // 2 else piece[:piece.rindex(" ")]
open(f"{sys.argv[2]}/eval.txt", "w").write(cut(0, 4000))
open(f"{sys.argv[2]}/human.txt", "w").write(cut(10000, 1500))
passage = cut(20000, 900)
open(f"{sys.argv[2]}/repeat.txt", "w").write(passage + "\n" + passage[: len(passage) // 3])
EOF

step "the built-in models"
tokeff models list

step "transplant: gemma3-270m given smollm2-135m's tokenizer (subword estimates), bits per byte on 4 kB held out"
tokeff transplant gemma3-270m --donor smollm2-135m --method subword --new-scale 1 \
  --eval-text "$WORK/eval.txt" -o "$WORK/gemma-smol" --json > "$WORK/transplant.json"
figure "$WORK/transplant.json" '"bits per byte: gemma3-270m %.4f -> transplanted %.4f (%d new tokens, %.0f s)" % (j["quality"]["base_bpb"], j["quality"]["transplanted_bpb"], j["vocabulary"]["new"], j["seconds"])'
tokeff verify "$WORK/gemma-smol"

step "byte-level decoding: a prompt that ends inside a token"
prompt=$'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    ret'
tokeff decode --model smollm2-135m --method byte --prompt "$prompt" --max-new-tokens 40 --json > "$WORK/byte.json"
python -c 'import json, sys; print(sys.argv[1] + "\033[4m" + json.load(open(sys.argv[2]))["text"] + "\033[0m")' "$prompt" "$WORK/byte.json"

step "watermark: key, watermarked generation, detection (and a human text)"
tokeff watermark keygen --model smollm2-135m --seed 1 -o "$WORK/key" --json > /dev/null
tokeff decode --model smollm2-135m --watermark "$WORK/key" --method sample --seed 1 \
  --prompt "The history of the city begins" --max-new-tokens 80 --ignore-eos --json > "$WORK/marked.json"
figure "$WORK/marked.json" 'j["text"]' > "$WORK/marked.txt"
tokeff watermark detect --key "$WORK/key" "$WORK/marked.txt" "$WORK/human.txt" --json > "$WORK/detect.json"
figure "$WORK/detect.json" '"\n".join("%s: p=%.4g, %s (%d tokens)" % (d["source"].split("/")[-1], d["p_value"], "watermarked" if d["watermarked"] else "not watermarked", d["tokens"]) for d in j)'

step "KV cache and fast decoding: smollm2-135m continues a passage it has partly seen, 48 new tokens"
common=(--model smollm2-135m --prompt-file "$WORK/repeat.txt" --max-new-tokens 48 --ignore-eos --json)
tokeff decode "${common[@]}" > "$WORK/greedy.json"
tokeff decode "${common[@]}" --kv-quant uniform:4 --kv-residual 32 > "$WORK/kv4.json"
tokeff decode "${common[@]}" --method lookup > "$WORK/lookup.json"
python - "$WORK" <<'EOF'
import json, sys
run = {name: json.load(open(f"{sys.argv[1]}/{name}.json")) for name in ("greedy", "kv4", "lookup")}
g, q, l = run["greedy"], run["kv4"], run["lookup"]
print(f"KV cache: float {g['peak_kv_bytes'] / 2**20:.2f} MiB, uniform:4 {q['peak_kv_bytes'] / 2**20:.2f} MiB "
      f"({g['peak_kv_bytes'] / q['peak_kv_bytes']:.1f}x smaller; {g['prompt_tokens']} prompt tokens, last 32 kept in float)")
print(f"tokens/s: greedy {g['tokens_per_s']:.1f}, lookup {l['tokens_per_s']:.1f} "
      f"({l['tokens_per_s'] / g['tokens_per_s']:.2f}x, {l['accepted_per_pass']:.2f} tokens per forward pass; "
      f"same text as greedy: {l['text'] == g['text']})")
EOF

step "every cached model verifies against its manifest"
for folder in "${TOKEFF_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tokeff}"/models/*/; do
  tokeff verify "$folder"
done
