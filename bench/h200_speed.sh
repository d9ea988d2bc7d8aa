#!/usr/bin/env bash
# Issue 18's measurements still owed on a GPU, in one call under one deadline, each with its peer
# where it has one; logs and JSON under $OUT (default ./bench_out):
#   decode       bench/decode.py beam 4 at L=128, both shapes, against HF generate (the two rows
#                below 2x before the staged key/value cache), tl_jax's search through the lineage
#                table and the one that reorders its cache, and a profile of each
#   decode_eval  a multi30k translator trained for $TRAIN_S seconds, its BLEU eval padded to
#                seq_len against batched by source width (bench/decode_eval.py)
#   speed_zipf   bench/speed.py big-128 on Zipf ids, tl_jax and the Marian peers
#   padding      bench/finetune_padding.py, d6-w512 on SST-2 (GPU tokens/s before and after)
#   padding_nocb the same with XLA's command buffers (CUDA graphs) off: whether switching between
#                the buckets' executables is what slows the bucketed steps (0.53x on an H100)
#   profile      bench/speed.py large-512 with --profile: kernel times and the HLO of the costliest
#                memory-bound fusions (no peer: where tl_jax's own step time goes)
#   fp8_profile  the same for bf16 and model.fp8 side by side: where fp8's step time goes, since
#                its matmuls should take half the time and the whole step gained only 9%
#   fp8          bench/speed.py large-512 and big-128, bf16 against model.fp8 (the train step's
#                Dense matmuls in fp8) with the peers; each fp8 row counts its fp8 matmuls
#   compile      bench/speed.py large-512: what XLA's autotuning and its Triton GEMMs cost in
#                compile seconds and give in step time (no peer: tl_jax against its own flags)
#   fp8_bound    bench/speed.py large-512 and big-128: bf16, fp8 with current scaling and fp8
#                with every scale fixed at 1, the most that removing the amax passes could gain
#                (no peer: the fp8 section of docs/BENCHMARKS.md has them)
#   fp8_compile  bench/speed.py large-512: bf16 and model.fp8 with XLA's default autotuning and
#                with level 1 (candidates timed, not initialised or checked): where fp8's extra
#                ~25 s of compile goes (no peer: tl_jax against its own flags; about 550 s on an
#                H100 in two calls, 2026-12-07, so give it a call of its own)
#   fastest_large  bench/speed.py large-512 with its peers: tl_jax's default and its fastest
#                options (model.gelu=tanh model.fp8=true, autotuning level 1), for issue 18's
#                ratios (2.0x HF eager, 1.35x plain Flax) with every option that has paid, and a
#                profile of each row, taken after its timing (where the last MFU would come from);
#                without the peers the two tl_jax rows took 255 s on an H100 (2026-12-07)
#   fastest_base the same for base-512 (MFU 0.50)
#   fastest_big  the same for big-128 against Marian torch.compile (1.3x)
#   candidates_large  bench/speed.py large-512, no peer: the fastest options against the same
#                with model.fused_qkv (attention's projections of one input as one matmul) and
#                with model.dropout_bits=16 (a quarter of dropout's threefry hashing), each untried
#                on a GPU
#   candidates_big  the same for big-128
#   dropout_bits bench/dropout_bits.py: flax's dropout against model.dropout_bits=16's alone, at
#                large-512's and big-128's shapes (seconds; the op's ratio, the steps' are above)
#   gelu_tanh    bench/speed.py large-512: the exact GELU against model.gelu=tanh (its tanh form,
#                with the same one-residual gradient), alone and with model.fp8 (no peer: tl_jax
#                against its own options; 417 s on an H100, 2026-12-07)
#   gelu_tanh_big  the same for big-128, without fp8 (227 s)
#   . bench/gpu_env.sh; DEADLINE=540 bench/h200_speed.sh [STEP ...]   # default: fastest_large
#   (the first four, the default until 2026-12-08, are measured: docs/BENCHMARKS.md)
# Env: DEADLINE (540), OUT, TRAIN_S (90), PEERS (.data/peers), TL_JAX_DATA (.data when present).
set -u
end=$(( $(date +%s) + ${DEADLINE:-540} ))
out=${OUT:-bench_out}
mkdir -p "$out"
[ -d .data ] && export TL_JAX_DATA=${TL_JAX_DATA:-.data}
data=${TL_JAX_DATA:-../shared/data}
peers=${PEERS:-.data/peers}
steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(fastest_large)  # issue 18's ratios with every option that paid

run() {  # NAME COMMAND...: under what is left of the deadline, output to $out/NAME.log
  local name=$1; shift
  local left=$(( end - $(date +%s) ))
  if [ "$left" -lt 30 ]; then echo "$name: skipped, the deadline is near"; return 124; fi
  echo "== $name ($left s left): $*"
  timeout -s TERM -k 20 "$left" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit status $rc"
  return "$rc"
}

# Which GPU this call got: a lease may hand out another kind than the one asked for, and
# training seconds on one kind do not compare with another's.
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort | uniq -c | xargs)
echo "device: ${gpus:-no GPU found by nvidia-smi}"
status=0
declare -A shapes=([large]=large-512 [base]=base-512 [big]=big-128)  # the fastest_*/candidates_* cases
for step in "${steps[@]}"; do
  case $step in
    decode) run decode python3 -u bench/decode.py --beams=4 --lengths=128 --both-searches --profile --out="$out/decode" || status=$? ;;
    decode_eval)
      run decode_train tl-jax translate --config=configs/translate.py:multi30k --workdir=/tmp/h200_mt \
        --config.data.train_prefix="$data/multi30k/train" \
        --config.data.eval_prefix="$data/multi30k/test_2016_flickr" \
        --config.data.test_prefix="$data/multi30k/test_2016_flickr" \
        --config.train.max_train_seconds="${TRAIN_S:-90}" \
        && run decode_eval python3 -u bench/decode_eval.py --workdir=/tmp/h200_mt --which=latest \
             --out="$out/decode_eval.json" || status=$? ;;
    speed_zipf) run speed_zipf python3 -u bench/speed.py --cases=big-128 --variants=tl_jax \
                  --peers="$peers" --ids=zipf --out="$out/speed_zipf" || status=$? ;;
    # 300 steps a round: the first GPU run's rounds of 50 lasted 0.2-0.4 s, too short to trust
    padding) run padding python3 -u bench/finetune_padding.py --data="$data" --model=d6-w512 \
               --steps=300 --out="$out/finetune_padding.json" || status=$? ;;
    padding_nocb) XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" run padding_nocb \
               python3 -u bench/finetune_padding.py --data="$data" --model=d6-w512 --steps=300 \
               --out="$out/finetune_padding_nocb.json" || status=$? ;;
    profile) run profile python3 -u bench/speed.py --cases=large-512 --variants=tl_jax --no-peers \
               --profile=large-512 --out="$out/profile" || status=$? ;;
    fp8_profile) run fp8_profile python3 -u bench/speed.py --cases=large-512 --variants=tl_jax,fp8 \
                   --no-peers --profile=large-512 --out="$out/fp8_profile" || status=$? ;;
    fp8) run fp8 python3 -u bench/speed.py --cases=large-512,big-128 --variants=tl_jax,fp8 \
           --peers="$peers" --out="$out/fp8" || status=$? ;;
    fp8_bound) run fp8_bound python3 -u bench/speed.py --cases=large-512,big-128 --no-peers \
                 --variants=tl_jax,fp8,fp8-static --out="$out/fp8_bound" || status=$? ;;
    compile) run compile python3 -u bench/speed.py --cases=large-512 --no-peers \
               --variants=tl_jax,no-autotune,no-triton-gemm --out="$out/compile" || status=$? ;;
    fp8_compile) run fp8_compile python3 -u bench/speed.py --cases=large-512 --no-peers \
                   --variants=tl_jax,autotune-1,fp8,fp8-autotune-1 --out="$out/fp8_compile" || status=$? ;;
    fastest_large|fastest_base|fastest_big)
      shape=${shapes[${step#fastest_}]}
      run "$step" python3 -u bench/speed.py --cases="$shape" --peers="$peers" --profile="$shape" \
        --variants=tl_jax,fp8-gelu-tanh-autotune-1 --out="$out/$step" || status=$? ;;
    candidates_large|candidates_big)
      run "$step" python3 -u bench/speed.py --cases="${shapes[${step#candidates_}]}" --no-peers \
        --variants=fp8-gelu-tanh-autotune-1,fastest-dropout-16,fastest-fused-qkv --out="$out/$step" || status=$? ;;
    dropout_bits) run dropout_bits python3 -u bench/dropout_bits.py --out="$out/dropout_bits.json" || status=$? ;;
    gelu_tanh) run gelu_tanh python3 -u bench/speed.py --cases=large-512 --no-peers \
                 --variants=tl_jax,gelu-tanh,fp8-gelu-tanh --out="$out/gelu_tanh" || status=$? ;;
    gelu_tanh_big) run gelu_tanh_big python3 -u bench/speed.py --cases=big-128 --no-peers \
                     --variants=tl_jax,gelu-tanh --out="$out/gelu_tanh_big" || status=$? ;;
    *) echo "unknown step $step: choose from decode decode_eval speed_zipf padding padding_nocb profile fp8_profile fp8 fp8_bound compile fp8_compile fastest_large fastest_base fastest_big candidates_large candidates_big dropout_bits gelu_tanh gelu_tanh_big"
       exit 2 ;;
  esac
done
echo "== summary"
for f in "$out"/decode/decode.md "$out"/speed_zipf/speed.md "$out"/fp8/speed.md "$out"/fp8_bound/speed.md \
         "$out"/fp8_profile/speed.md "$out"/fp8_compile/speed.md "$out"/fastest_*/speed.md "$out"/candidates_*/speed.md "$out"/gelu_tanh/speed.md "$out"/gelu_tanh_big/speed.md \
         "$out"/compile/speed.md; do [ -f "$f" ] && tail -n 15 "$f"; done
grep -h "speedup\|^padded\|^bucketed" "$out"/decode_eval.log 2>/dev/null
tail -n 8 "$out"/padding.log "$out"/padding_nocb.log "$out"/dropout_bits.log 2>/dev/null
exit "$status"  # the last failed step's (124: the deadline)
