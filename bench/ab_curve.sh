#!/usr/bin/env bash
# One config field at two values on a real-text pretraining curve, the same steps, seeds and data
# for both (issue 18: bf16 moments and fp8 matmuls, each "measured on a real pretraining curve").
# Usage:
#   bench/ab_curve.sh ROOT PRESET STEPS "SEEDS" FIELD "A B" [--config.SECTION.FIELD=VALUE ...]
# e.g. (2-core CPU, tiny-wikitext: about 2.5 min a run; an fp8 run up to 5, its fp8 emulated)
#   bench/ab_curve.sh /tmp/mu tiny-wikitext 1500 "0 1" train.mu_dtype "float32 bfloat16"
#   bench/ab_curve.sh /tmp/fp8 tiny-wikitext 1500 "0 1" model.fp8 "false true"
# Prints each run's eval loss at every eval. Re-running skips finished runs (each resumes).
set -euo pipefail
root=$1 preset=$2 steps=$3 seeds=$4 field=$5 values=$6
shift 6
mkdir -p "$root"
for seed in $seeds; do
  for value in $values; do
    tl-jax pretrain --config=configs/mlm.py:"$preset" --workdir="$root/$value-seed$seed" \
      --config."$field"="$value" --config.train.seed="$seed" --config.train.max_steps="$steps" \
      --config.eval.every_steps=$((steps / 6)) --config.checkpoint.every_steps=100000000 "$@" \
      > "$root/$value-seed$seed.log" 2>&1 || { tail -3 "$root/$value-seed$seed.log"; exit 1; }
  done
done
python3 - "$root" "$field" "$values" $seeds <<'PY'
import json, sys
root, field, values, seeds = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]
for seed in seeds:
  for value in values:
    with open(f"{root}/{value}-seed{seed}/metrics.jsonl") as f:
      evals = [(r["step"], r["eval_loss"]) for r in map(json.loads, f) if "eval_loss" in r]
    print(f"{field}={value:9s} seed {seed}: " + "  ".join(f"{s}: {l:.4f}" for s, l in evals))
PY
