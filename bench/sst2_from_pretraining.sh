#!/usr/bin/env bash
# Pretrain an encoder on real English text for a training-seconds budget, then finetune it
# on SST-2 (shared TSV, 5% carved off as dev) and print the dev accuracy. Usage:
#   bench/sst2_from_pretraining.sh ROOT DATA MLM_PRESET PRETRAIN_SECONDS FINETUNE_SECONDS [--config.x=y ...]
# e.g. (GPU)  bench/sst2_from_pretraining.sh runs/sst2 ../shared/data roberta-base 330 240 \
#               --config.train.max_steps=4000
#      (CPU)  FINETUNE_ARGS="--config.head.pooling=mean --config.train.learning_rate=1e-3" \
#             bench/sst2_from_pretraining.sh runs/sst2 ../shared/data tiny 90 150 \
#               --config.train.max_steps=1000 --config.model.pre_ln=true
# The text: WikiText-2 valid (train) and test (eval) plus the English side of Multi30k. Extra
# arguments are pretraining overrides; $FINETUNE_ARGS holds finetuning ones. The encoder is
# finetuned from its best pretraining checkpoint and, as the baseline, from random weights.
set -euo pipefail
root=$1 data=$2 preset=$3 pre_seconds=$4 ft_seconds=$5; shift 5
bench/pretrain_text.sh "$root/pretrain" "$data" "$preset" "$pre_seconds" "$@"
# From the best eval loss: a few MB of text is overfitted long before the budget ends.
for init in pretrained scratch; do
  tl-jax finetune --config=configs/glue.py:sst2 --init="$root/pretrain" --workdir="$root/sst2-$init" \
    --config.init.checkpoint=best --config.init.from_scratch=$([ $init = scratch ] && echo true || echo false) \
    --config.data.train_files="$data/sst2/train.tsv" --config.train.max_train_seconds="$ft_seconds" \
    --config.train.log_every=500 --config.eval.every_steps=500 --config.checkpoint.every_steps=1000000 \
    ${FINETUNE_ARGS:-} 2>&1 | grep -E "^(data|finetuning|encoder|compiled|stopped|step [0-9]+ \|)"
done
python3 - "$root" <<'PY'
import json, sys
root = sys.argv[1]
read = lambda run: [json.loads(l) for l in open(f"{root}/{run}/metrics.jsonl")]
pre = [l for l in read("pretrain") if "eval_loss" in l][-1]
best_pre = json.load(open(f"{root}/pretrain/best/best.json"))
cfg = json.load(open(f"{root}/pretrain/config.json"))["model"]
print(f"{'model':<8} {'init':<10} {'pre_steps':>9} {'pre_s':>6} {'best_eval':>9} {'ft_steps':>8} "
      f"{'ft_s':>5} {'dev_acc':>7} {'best_acc':>8}")
for init in ("pretrained", "scratch"):
  ft = [l for l in read(f"sst2-{init}") if "accuracy" in l]
  best = json.load(open(f"{root}/sst2-{init}/best/best.json"))
  print(f"{cfg['num_layers']}x{cfg['d_model']:<5} {init:<10} {pre['step']:>9} {pre['train_seconds']:>6.0f} "
        f"{best_pre['eval_loss']:>9.3f} {ft[-1]['step']:>8} {ft[-1]['train_seconds']:>5.0f} "
        f"{ft[-1]['accuracy']:>7.4f} {best['accuracy']:>8.4f}")
PY
