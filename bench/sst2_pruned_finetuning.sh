#!/usr/bin/env bash
# The paper's Pareto recipe against one-shot pruning, on SST-2: from one pretrained encoder,
# finetune (a) densely and (b) while pruning to SPARSITY on the cubic schedule; then prune (a)
# one-shot to SPARSITY and quantize both at 8/6/4/3/2 bits. Usage:
#   bench/sst2_pruned_finetuning.sh ROOT DATA PRETRAIN_SECONDS PRESET SPARSITY
# e.g. (GPU)  bench/sst2_pruned_finetuning.sh runs/prune ../shared/data 90 d6-w512 0.7
set -euo pipefail
root=$1 data=$2 pre_seconds=$3 preset=$4 sparsity=$5
bench/pretrain_text.sh "$root/pretrain" "$data" "$preset" "$pre_seconds"
finetune() {  # WORKDIR [overrides]
  local workdir=$1; shift
  tl-jax finetune --config=configs/glue.py:sst2 --init="$root/pretrain" --workdir="$workdir" \
    --config.init.checkpoint=best --config.data.train_files="$data/sst2/train.tsv" \
    --config.train.log_every=1000 --config.eval.every_steps=500 \
    --config.checkpoint.every_steps=1000000 ${FINETUNE_ARGS:-} "$@" \
    2>&1 | grep -E "^(finetuning|pruning|compiled|stopped|new best|step [0-9]+ \|)"
}
finetune "$root/dense"
finetune "$root/pruned" --config.prune.method=magnitude --config.prune.sparsity="$sparsity"
grid="--config=configs/compress.py:paper --config.quant_methods=uniform --config.nm=false"
tl-jax compress $grid --workdir="$root/dense" --config.bits= --config.sparsities="$sparsity" \
  --config.combined_sparsities="$sparsity" --config.combined_bits=8,6,4,3,2 \
  2>&1 | grep -E "^(compressing|compiled|\[)"
tl-jax compress $grid --workdir="$root/pruned" --config.sparsities= --config.combined_sparsities= \
  2>&1 | grep -E "^(compressing|compiled|\[)"
python3 -m tl_jax.report.table "$root/dense" "$root/pruned"
