#!/usr/bin/env bash
# Re-take the README's screenshots from real windows (a private Xvfb + openbox; see
# docs/real-display.md), with the real bundled model. About 15 minutes on a 2-core CPU.
#
#   bash docs/screenshots/make.sh [RUNS_DIR]
#
# Trains, in RUNS_DIR (default: a new temporary folder, never your own runs): three `train --demo`
# runs to compare on the Runs page (lr 5e-4 rank 16; lr 2e-4 rank 8; the first in 4-bit NF4) and
# the reviews classification demo, evaluates it against the base model, then renders every page:
# the Train, Chat and Export pages on the first demo run, the Evaluate page on the reviews run; and
# the preference demo (`train --demo dpo`, evaluated against the base) for train-dpo.png and
# data-dpo.png; and memory-long-context.png (the Model page estimating an 8B model at 22k tokens).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-$(mktemp -d)}"
studio=.venv/bin/lora-studio
out=docs/screenshots
echo "runs in $runs"

train() { "$studio" train --runs-dir "$runs" "$@"; }
[ -n "$(ls -d "$runs"/*-lr5e-4-r16 2>/dev/null)" ] || train --demo --run-name lr5e-4-r16
[ -n "$(ls -d "$runs"/*-lr2e-4-r8 2>/dev/null)" ] || train --demo --lr 2e-4 --lora-r 8 --lora-alpha 16 --run-name lr2e-4-r8
[ -n "$(ls -d "$runs"/*-qlora-nf4 2>/dev/null)" ] || train --demo --quant nf4 --run-name qlora-nf4
[ -n "$(ls -d "$runs"/*-reviews 2>/dev/null)" ] || train --data resources/datasets/reviews.jsonl \
    --eval-path resources/datasets/reviews_eval.jsonl --max-steps 35 --run-name reviews
reviews=$(ls -d "$runs"/*-reviews | head -1)
[ -d "$reviews/eval" ] || "$studio" evaluate --run "$reviews" --compare-base

demos=("$runs"/*-lr5e-4-r16 "$runs"/*-lr2e-4-r8 "$runs"/*-qlora-nf4)
.venv/bin/python -m lora_studio.gui.screenshots "$out" --model default --run "${demos[0]}" --compare "${demos[@]}"
evaluate=$(mktemp -d)
.venv/bin/python -m lora_studio.gui.screenshots "$evaluate" --model default --run "$reviews"
cp "$evaluate/evaluate.png" "$out/evaluate.png"
rm -rf "$evaluate"
[ -n "$(ls -d "$runs"/*-demo-dpo 2>/dev/null)" ] || train --demo dpo --eval-fraction 0.1
dpo=$(ls -d "$runs"/*-demo-dpo | head -1)
[ -d "$dpo/eval" ] || "$studio" evaluate --run "$dpo" --compare-base
preference=$(mktemp -d)
.venv/bin/python -m lora_studio.gui.screenshots "$preference" --model default --run "$dpo"
cp "$preference/train.png" "$out/train-dpo.png"
cp "$preference/data.png" "$out/data-dpo.png"
rm -rf "$preference"
.venv/bin/python -m lora_studio.gui.screenshots "$out" --long-context 22000
echo "written: $out/*.png (look at them before committing)"
