#!/usr/bin/env bash
# RQ1 in miniature: pretrain several grid sizes for the same training seconds on the
# synthetic language and print eval loss per size. Usage:
#   bench/equal_budget.sh ROOT SECONDS PRESET [PRESET ...]      e.g. runs/rq1 45 d3-w256 d6-w512 d12-w768
set -euo pipefail
root=$1 seconds=$2; shift 2
for preset in "$@"; do
  tl-jax pretrain --config=configs/mlm.py:"$preset" --workdir="$root/$preset" \
    --config.data.vocab_size=4096 --config.data.max_train_tokens=20000000 \
    --config.train.max_train_seconds="$seconds" --config.train.max_steps=3000 \
    --config.train.warmup_steps=100 --config.train.log_every=50 \
    --config.eval.every_steps=0 --config.eval.every_seconds=$((seconds / 3)) \
    --config.checkpoint.every_steps=100000 2>&1 | grep -E "^(compiled|stopped)"
done
python3 - "$root" "$@" <<'PY'
import json, sys
root, presets = sys.argv[1], sys.argv[2:]
print(f"{'preset':<10} {'steps':>6} {'train_s':>8} {'eval_loss':>9} {'tok/s':>9} {'mfu':>5}")
for p in presets:
  lines = [json.loads(l) for l in open(f"{root}/{p}/metrics.jsonl")]
  ev = [l for l in lines if "eval_loss" in l][-1]
  tr = [l for l in lines if "loss" in l][1:] or [l for l in lines if "loss" in l]
  tps = sorted(l["tokens_per_second"] for l in tr)[len(tr) // 2]
  mfu = sorted(l["mfu"] or 0 for l in tr)[len(tr) // 2]
  print(f"{p:<10} {ev['step']:>6} {ev['train_seconds']:>8.1f} {ev['eval_loss']:>9.4f} {tps:>9.0f} {mfu:>5.2f}")
PY
