#!/usr/bin/env bash
# Where does the synthetic language stop rewarding size? Pretrain shapes LAYERSxWIDTH for the
# same training seconds (or steps) on one version of the language and print each one's eval
# losses over time. The token cache is built once (shared by all shapes: same key).
#   bench/synthetic_floor.sh ROOT VERSION SECONDS SHAPE [SHAPE ...]
# GPU (one H200, ~5 min):  bench/synthetic_floor.sh runs/floor 4 50 3x256 6x512 12x768
# CPU proxy (2 cores):     BASE=tiny STEPS=400 TOKENS=2000000 bench/synthetic_floor.sh /tmp/floor 4 0 2x64 4x128
# Env: BASE preset of configs/mlm.py (d3-w256: bf16, batch 256, seq 128), TOKENS in the train
# cache (200M), VOCAB (4096; 2000 when BASE=tiny), WARMUP (300; 50), STEPS (0: by SECONDS).
# Every shape is pre-LN with the base preset's learning rate and WARMUP steps, fixed before any run.
set -euo pipefail
root=$1 version=$2 seconds=$3; shift 3
base=${BASE:-d3-w256} tokens=${TOKENS:-200000000} steps=${STEPS:-0}
vocab=${VOCAB:-$([ "$base" = tiny ] && echo 2000 || echo 4096)}
warmup=${WARMUP:-$([ "$base" = tiny ] && echo 50 || echo 300)}
if [ "$steps" -gt 0 ]; then
  budget=(--config.train.max_steps="$steps" --config.eval.every_steps=$((steps / 4)))
else
  budget=(--config.train.max_steps=1000000 --config.train.max_train_seconds="$seconds"
          --config.train.schedule_horizon=seconds --config.eval.every_steps=0
          --config.eval.every_seconds=$((seconds / 5)))
fi
for shape in "$@"; do
  layers=${shape%x*} width=${shape#*x}
  heads=$(( width >= 64 ? width / 64 : 1 ))
  tl-jax pretrain --config=configs/mlm.py:"$base" --workdir="$root/v$version-$shape" \
    --config.data.synthetic_version="$version" --config.data.vocab_size="$vocab" \
    --config.data.max_train_tokens="$tokens" --config.model.pre_ln=True \
    --config.train.warmup_steps="$warmup" \
    --config.model.num_layers="$layers" --config.model.d_model="$width" \
    --config.model.num_heads="$heads" --config.model.d_ff=$((4 * width)) \
    --config.train.log_every=50 --config.checkpoint.every_steps=100000000 "${budget[@]}" \
    2>&1 | grep -E "^(data:|compiled|stopped)" || true
done
python3 - "$root" "$version" "$@" <<'PY'
import json, sys
root, version, shapes = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"synthetic language v{version}: eval loss (nats) at each eval, then the last")
print(f"{'shape':<8} {'steps':>7} {'train_s':>8} {'eval_loss':>9}  curve")
for shape in shapes:
  lines = [json.loads(l) for l in open(f"{root}/v{version}-{shape}/metrics.jsonl")]
  evals = [l for l in lines if "eval_loss" in l and l["step"] > 0]
  last = evals[-1]
  curve = " ".join(f"{l['eval_loss']:.3f}" for l in evals)
  print(f"{shape:<8} {last['step']:>7} {last.get('train_seconds', 0):>8.1f} "
        f"{last['eval_loss']:>9.4f}  {curve}")
PY
