#!/usr/bin/env bash
# End-to-end demo on the two built-in models; `make demo` runs it after set-up.
set -euo pipefail
DATA="${DATA:-../shared/data}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "the built-in models"
tokeff models list
tokeff models info smollm2-135m
tokeff models info gemma3-270m

step "bits per byte on 20 kB of WikiText-2 (tokenizer-independent, so the two compare)"
tokeff eval bpb --model smollm2-135m "$DATA/wikitext2-valid.txt" --max-bytes 20000
tokeff eval bpb --model gemma3-270m "$DATA/wikitext2-valid.txt" --max-bytes 20000

step "greedy decoding"
tokeff decode --model smollm2-135m --chat --prompt "What is the capital of France?" --max-new-tokens 24
tokeff decode --model gemma3-270m --prompt "The capital of France is" --max-new-tokens 24

step "seeded sampling, as JSON"
tokeff decode --model smollm2-135m --method sample --temperature 0.8 --seed 1 \
  --prompt "Once upon a time" --max-new-tokens 24 --json

step "every cached model verifies against its manifest"
for folder in "${TOKEFF_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tokeff}"/models/*/; do
  tokeff verify "$folder"
done
