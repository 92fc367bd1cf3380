#!/usr/bin/env bash
# Every head of the shipped three-head data/models/english.pt, with and without the char
# 8-gram LM, on the first 150 clips of each English dev set (README "Real speech").
# Needs the prepared English data: python -m recipes.english.prepare --corpora ../shared/corpora --out exp/english/data
# Usage: bash recipes/compare_heads/shipped_english_heads.sh [OUT_DIR]   (one JSON line per cell)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-exp/compare_heads/shipped_english}; mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
lm=(--lm-texts data/models/english_lm.txt --lm-order 8)
for set in an4 speechocean762; do
  ev=(python -m asr evaluate --model data/models/english.pt --corpus manifest
      --data "exp/english/data/dev_$set.jsonl" --limit 150 --threads 1 --plain)
  "${ev[@]}" --head ctc --search ctc_prefix_beam --beam 32 --token-min-logp -5 --beam-prune-logp 10 > "$out/${set}_ctc_nolm.json"
  "${ev[@]}" --head ctc --search ctc_prefix_beam --beam 32 --token-min-logp -5 --beam-prune-logp 10 \
      "${lm[@]}" --lm-weight 0.5 --length-bonus 1.0 > "$out/${set}_ctc_lm.json"
  "${ev[@]}" --head transducer --search transducer_beam --beam 8 > "$out/${set}_transducer_nolm.json"
  "${ev[@]}" --head transducer --search transducer_beam --beam 8 "${lm[@]}" --lm-weight 0.3 --length-bonus 0.5 \
      > "$out/${set}_transducer_lm.json"
  "${ev[@]}" --head attention --search attention_beam --beam 8 --length-norm 1.0 > "$out/${set}_attention_nolm.json"
  "${ev[@]}" --head attention --search attention_beam --beam 8 --length-norm 1.0 "${lm[@]}" --lm-weight 0.3 \
      --length-bonus 0.0 > "$out/${set}_attention_lm.json"
done
for f in "$out"/*.json; do echo "$(basename "$f" .json) $(tail -1 "$f")"; done
