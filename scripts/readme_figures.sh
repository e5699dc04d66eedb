#!/usr/bin/env bash
# The benchmark figures of the README, reproducible by anyone with the repo and ../shared:
#   docs/figures/bench_imagenet.{json,md,csv,png}  Coral's MobileNetV2 (ImageNet, iNat birds) at 1 and 2 threads,
#                                                  accuracy on the labelled photos, the live pipeline on a clip
#   docs/figures/bench_run.{json,md,csv,png}       every variant of a converted run (when RUN is given)
#
# usage: scripts/readme_figures.sh [RUN_DIR [DATA_DIR]]
#   e.g. scripts/readme_figures.sh runs/potato ../shared/datasets/plantvillage-potato
# env:   PYTHON (default .venv/bin/python), OUT (default docs/figures), THREADS (default 1,2),
#        RUNS (default 300), EDGECLS_SHARED (default ../shared), NICE (default 10; be kind to a shared box)
# A report already in OUT is passed as --compare, so a rerun prints how much faster or slower each model got.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-docs/figures}
THREADS=${THREADS:-1,2}
RUNS=${RUNS:-300}
NICE=${NICE:-10}
SHARED=${EDGECLS_SHARED:-../shared}
export EDGECLS_SHARED=$SHARED
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

bench() {  # bench NAME ARGS...: writes $OUT/NAME.{json,md,csv,png}, comparing with the previous NAME.json
  local name=$1; shift
  local compare=()
  if [[ -f "$OUT/$name.json" ]]; then cp "$OUT/$name.json" "$TMP/$name.old.json"; compare=(--compare "$TMP/$name.old.json"); fi
  nice -n "$NICE" "$PYTHON" -m edgecls bench "$@" --threads "$THREADS" --runs "$RUNS" --warmup 20 \
    --json "$OUT/$name.json" --md "$OUT/$name.md" --csv "$OUT/$name.csv" --plot "$OUT/$name.png" "${compare[@]}"
}

"$PYTHON" -m scripts.samples labelled "$TMP/labelled" >/dev/null
"$PYTHON" -m scripts.samples clip "$TMP/clip.mp4" --frames 150 >/dev/null
bench bench_imagenet "$SHARED/models/mobilenet_v2_1.0_224_quant.tflite" \
  --data "$TMP/labelled" --pipeline "$TMP/clip.mp4" --pipeline-frames 150

if [[ $# -ge 1 ]]; then
  RUN=$1
  DATA=${2:-}
  models=("$RUN"/model_*.tflite)
  extra=()
  # 100 images per class: enough to see a quantization drop, minutes not hours on a Pi.
  if [[ -n "$DATA" ]]; then extra=(--data "$DATA" --max-per-class "${PER_CLASS:-100}"); fi
  bench bench_run "${models[@]}" "${extra[@]}"
fi
echo "figures in $OUT/"
