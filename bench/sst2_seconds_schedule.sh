#!/usr/bin/env bash
# SST-2 finetuning held to a training-seconds budget, with the learning-rate schedule laid out
# over the run's steps (train.epochs, the default) or over the seconds budget
# (train.schedule_horizon=seconds), each for several seeds, from one pretrained encoder. Usage:
#   bench/sst2_seconds_schedule.sh ROOT DATA MLM_PRESET PRETRAIN_SECONDS FINETUNE_SECONDS "SEEDS"
# e.g. (GPU) bench/sst2_seconds_schedule.sh runs/sched .data d6-w512 60 30 "0 1"
# PRETRAIN_ARGS and FINETUNE_ARGS add config overrides to each side, e.g. (CPU, 2 cores)
#   PRETRAIN_ARGS=--config.model.pre_ln=true FINETUNE_ARGS="--config.head.pooling=mean
#   --config.train.learning_rate=1e-3" bench/sst2_seconds_schedule.sh /tmp/sched ../shared/data tiny 60 30 "0 1"
# Prints, per run: the step it stopped at, the step its decay ends at, the last learning rate and
# the dev accuracy (last and best). Re-running skips finished finetunes (each resumes).
set -euo pipefail
root=$1 data=$2 preset=$3 pre_seconds=$4 ft_seconds=$5 seeds=$6
[ -f "$root/pretrain/best/best.json" ] || bench/pretrain_text.sh "$root/pretrain" "$data" "$preset" "$pre_seconds" ${PRETRAIN_ARGS:-}
for horizon in steps seconds; do
  for seed in $seeds; do
    tl-jax finetune --config=configs/glue.py:sst2 --init="$root/pretrain" --workdir="$root/$horizon-seed$seed" \
      --config.init.checkpoint=best --config.data.train_files="$data/sst2/train.tsv" \
      --config.train.seed="$seed" --config.train.max_train_seconds="$ft_seconds" \
      --config.train.schedule_horizon="$horizon" --config.train.log_every=100 \
      --config.eval.every_steps=1000000 --config.checkpoint.every_steps=1000000 ${FINETUNE_ARGS:-} \
      2>&1 | grep -E "^(finetuning|compiled|stopped|horizon|schedule)" || true
  done
done
python3 - "$root" "$seeds" <<'PY'
import json, statistics, sys
root, seeds = sys.argv[1], sys.argv[2].split()
read = lambda run: [json.loads(l) for l in open(f"{root}/{run}/metrics.jsonl")]
print(f"{'horizon':<8} {'seed':>4} {'steps':>6} {'train_s':>7} {'last_lr':>9} {'dev_acc':>7}")
for horizon in ("steps", "seconds"):
  accs = []
  for seed in seeds:
    lines = read(f"{horizon}-seed{seed}")
    train = [l for l in lines if "learning_rate" in l][-1]
    acc = [l for l in lines if "accuracy" in l][-1]
    accs.append(acc["accuracy"])
    print(f"{horizon:<8} {seed:>4} {train['step']:>6} {train['train_seconds']:>7.1f} "
          f"{train['learning_rate']:>9.2e} {acc['accuracy']:>7.4f}")
  spread = statistics.stdev(accs) if len(accs) > 1 else float("nan")
  print(f"{horizon:<8} mean {statistics.mean(accs):.4f} +- {spread:.4f} (sd over {len(accs)} seeds)")
PY
