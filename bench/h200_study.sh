#!/usr/bin/env bash
# Runs parts of the H200 study (configs/sweeps/h200_study.py) one after another under one
# deadline, then packs what `tl-jax report` reads (each workdir's config.json, metrics.jsonl,
# compress.jsonl) with the sweep's markers and logs into $OUT/h200_study.tgz (or ./).
# The device lends 10 minutes a call: repeat the same command on the still-warm machine and
# the sweep resumes where the deadline stopped it (SIGTERM checkpoints the running stage).
#   . bench/gpu_env.sh; DEADLINE=555 bench/h200_study.sh rq1 finetune
# Env: DEADLINE seconds for all parts (555), ROOT (runs/h200_study), TL_JAX_DATA (.data when
# present: the device gets ../shared/data only as a carried copy), ONLY (stage names, e.g.
# "rq1/d12-w768/seed0/pretrain rq1/d12-w768/seed1/pretrain": run just these of each part, in
# this order, for a lease too short for the whole part).
set -u
root=${ROOT:-runs/h200_study}
end=$(( $(date +%s) + ${DEADLINE:-555} ))
[ -d .data ] && export TL_JAX_DATA=${TL_JAX_DATA:-.data}
# Seed 1 and the finetunes repeat seed 0's shapes: a persistent compilation cache skips their
# compiles (compile time is not training time either way; this only shortens the calls).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/tl_jax_xla_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-2}
read -r -a stages <<< "${ONLY:-}"
[ "${#stages[@]}" -gt 0 ] || stages=("")  # "": the whole part
# Which GPU this call got: a lease may hand out another kind than the one asked for, and
# training seconds on one kind do not compare with another's.
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort | uniq -c | xargs)
echo "device: ${gpus:-no GPU found by nvidia-smi}"
rc=0
for part in "$@"; do
  for only in "${stages[@]}"; do
    left=$(( end - $(date +%s) ))
    if [ "$left" -lt 30 ]; then rc=124; break 2; fi
    timeout -s TERM -k 30 "$left" tl-jax sweep --config=configs/sweeps/h200_study.py:"$part" \
      --root="$root" ${only:+--only="$only"}
    rc=$?
    [ "$rc" -eq 0 ] || break 2
  done
done
out=${OUT:-.}
(cd "$root" && find . \( -name params -o -name checkpoints -o -name tokenizer \) -prune -o \
   -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.done' \) -print \
   | tar czf - -T -) > "$out/h200_study.tgz"
echo "h200_study.sh: parts $* stopped with exit status $rc; $(du -h "$out/h200_study.tgz" | cut -f1) packed"
exit "$rc"
