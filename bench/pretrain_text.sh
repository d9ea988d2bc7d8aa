#!/usr/bin/env bash
# Pretrain an encoder on real English text for a training-seconds budget. Usage:
#   bench/pretrain_text.sh WORKDIR DATA MLM_PRESET SECONDS [--config.x=y ...]
# The text: WikiText-2 valid (train) and test (eval) plus the English side of Multi30k, all
# of it; evaluated four times over the budget, so WORKDIR/best holds the best-eval-loss
# parameters (a few MB of text is overfitted long before a GPU budget ends).
set -euo pipefail
workdir=$1 data=$2 preset=$3 seconds=$4; shift 4
tl-jax pretrain --config=configs/mlm.py:"$preset" --workdir="$workdir" \
  --config.data.source=text \
  --config.data.train_files="$data/wikitext2/valid.txt,$data/multi30k/train.en" \
  --config.data.eval_files="$data/wikitext2/test.txt" --config.data.max_train_tokens=0 \
  --config.train.max_train_seconds="$seconds" --config.train.max_steps=1000000 \
  --config.train.log_every=100 --config.eval.every_steps=0 \
  --config.eval.every_seconds=$((seconds / 4)) --config.checkpoint.every_steps=1000000 \
  "$@" 2>&1 | grep -E "^(data|compiled|stopped|step [0-9]+ \|)"
