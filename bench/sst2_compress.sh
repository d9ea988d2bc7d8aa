#!/usr/bin/env bash
# The paper's compression study on SST-2 (RQ2, RQ3): for each model size, pretrain on real
# English text for a training-seconds budget, finetune on SST-2 (shared TSV, 5% carved off as
# dev) from the best pretraining parameters, and run a compression grid on the finetuned
# model; then print accuracy against memory for all sizes. Usage:
#   bench/sst2_compress.sh ROOT DATA PRETRAIN_SECONDS GRID PRESET... 
# e.g. (GPU)  bench/sst2_compress.sh runs/compress ../shared/data 120 paper d6-w512 roberta-base
#      (CPU)  bench/sst2_compress.sh runs/compress ../shared/data 60 quick tiny-wikitext
# $FINETUNE_ARGS and $COMPRESS_ARGS hold extra finetuning and grid overrides.
set -euo pipefail
root=$1 data=$2 pre_seconds=$3 grid=$4; shift 4
finetuned=()
for preset in "$@"; do
  echo "== $preset"
  bench/pretrain_text.sh "$root/$preset/pretrain" "$data" "$preset" "$pre_seconds"
  tl-jax finetune --config=configs/glue.py:sst2 --init="$root/$preset/pretrain" \
    --workdir="$root/$preset/sst2" --config.init.checkpoint=best \
    --config.data.train_files="$data/sst2/train.tsv" --config.train.log_every=500 \
    --config.eval.every_steps=500 --config.checkpoint.every_steps=1000000 ${FINETUNE_ARGS:-} \
    2>&1 | grep -E "^(data|finetuning|encoder|compiled|stopped|step [0-9]+ \|)"
  tl-jax compress --config=configs/compress.py:"$grid" --workdir="$root/$preset/sst2" \
    ${COMPRESS_ARGS:-} 2>&1 | grep -E "^(compressing|compiled|\[)"
  finetuned+=("$root/$preset/sst2")
done
python3 -m tl_jax.report.table "${finetuned[@]}"
