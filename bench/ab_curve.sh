#!/usr/bin/env bash
# Adam's first moment in bfloat16 against float32 on a real-text pretraining curve, the same
# steps, seeds and data for both (issue 18: "bf16 moments where accuracy allows, measured on a
# real pretraining curve"). Usage:
#   bench/mu_dtype_curve.sh ROOT PRESET STEPS "SEEDS" [--config.SECTION.FIELD=VALUE ...]
# e.g. (CPU, 2 cores, ~10 min) bench/mu_dtype_curve.sh /tmp/mu tiny-wikitext 1500 "0 1"
# Prints each run's eval loss at every eval. Re-running skips finished runs (each resumes).
set -euo pipefail
root=$1 preset=$2 steps=$3 seeds=$4
shift 4
for seed in $seeds; do
  for mu in float32 bfloat16; do
    tl-jax pretrain --config=configs/mlm.py:"$preset" --workdir="$root/$mu-seed$seed" \
      --config.train.mu_dtype="$mu" --config.train.seed="$seed" --config.train.max_steps="$steps" \
      --config.eval.every_steps=$((steps / 6)) --config.checkpoint.every_steps=100000000 "$@" \
      > "$root/$mu-seed$seed.log" 2>&1 || { tail -3 "$root/$mu-seed$seed.log"; exit 1; }
  done
done
python3 - "$root" $seeds <<'PY'
import json, sys
root, seeds = sys.argv[1], sys.argv[2:]
for seed in seeds:
  for mu in ("float32", "bfloat16"):
    with open(f"{root}/{mu}-seed{seed}/metrics.jsonl") as f:
      evals = [(r["step"], r["eval_loss"]) for r in map(json.loads, f) if "eval_loss" in r]
    print(f"{mu:9s} seed {seed}: " + "  ".join(f"{s}: {l:.4f}" for s, l in evals))
PY
