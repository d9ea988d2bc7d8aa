#!/usr/bin/env bash
# One tl-jax command on all the GPUs of this host.
#
#   launch/gpu_host.sh [--gpus=N|LIST] [--per-gpu [--port=PORT] [--log-dir=DIR]] [--dry-run] -- tl-jax COMMAND ...
#
# By default one process drives every GPU (jax sees them all; the mesh comes from the
# command's --config.parallel.* flags, e.g. --config.parallel.preset=fsdp). With --per-gpu,
# one process per GPU joins a jax.distributed job on this host (TL_JAX_COORDINATOR on
# 127.0.0.1), as the processes of a multi-node job would: process 0's output comes here, the
# others' go to DIR/process-I.log. SIGTERM or Ctrl-C reaches every process: each saves a
# checkpoint and exits 143; re-run the same command to resume.
#
# Options:
#   --gpus=N | --gpus=0,2,3   how many GPUs (the first N) or which; default: all (nvidia-smi)
#   --per-gpu                 one process per GPU instead of one for all
#   --port=PORT               the coordinator's port with --per-gpu (default 12355)
#   --log-dir=DIR             where the other processes' logs go with --per-gpu (default logs/gpu_host)
#   --dry-run                 print the commands and run none
set -euo pipefail
LAUNCHER=gpu_host.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GPUS= PER_GPU=0 PORT=12355 LOG_DIR=logs/gpu_host
while (($#)); do
  case $1 in
    --gpus=*) GPUS=${1#*=} ;;
    --per-gpu) PER_GPU=1 ;;
    --port=*) PORT=${1#*=} ;;
    --log-dir=*) LOG_DIR=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; break ;;
    *) die "unknown option '$1'; the options are listed at the top of launch/gpu_host.sh" ;;
  esac
  shift
done
(($#)) || die "no command after --; e.g. -- tl-jax pretrain --config=configs/mlm.py:roberta-base --workdir=runs/base --config.parallel.preset=fsdp"

# The GPU ids to use.
GIVEN=$GPUS
if [[ -z $GPUS ]]; then
  command -v nvidia-smi > /dev/null || die "nvidia-smi is not here to count the GPUs; give --gpus=N"
  GPUS=$(nvidia-smi --list-gpus | wc -l)
fi
if [[ $GPUS =~ ^[1-9][0-9]*$ ]]; then
  IDS=($(seq 0 $((GPUS - 1))))
elif [[ $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  IFS=, read -ra IDS <<< "$GPUS"
else
  die "--gpus=$GPUS is neither a count nor a comma-separated list of GPU ids"
fi

if ((!PER_GPU)); then
  # One process; TL_JAX_DISTRIBUTED=off keeps it alone even inside a SLURM allocation.
  visible=()
  [[ -z $GIVEN ]] || visible=(CUDA_VISIBLE_DEVICES="$(IFS=,; echo "${IDS[*]}")")
  run env TL_JAX_DISTRIBUTED=off "${visible[@]}" "$@"
  exit
fi

# One process per GPU: each sees every GPU but drives its own (JAX_LOCAL_DEVICE_IDS, read by
# jax.distributed.initialize), so NCCL reaches its peers directly.
count=${#IDS[@]}
run mkdir -p "$LOG_DIR"
declare -A pid_of
for ((i = 0; i < count; i++)); do
  proc=(env TL_JAX_COORDINATOR=127.0.0.1:"$PORT" TL_JAX_NUM_PROCESSES="$count" TL_JAX_PROCESS_ID="$i"
        JAX_LOCAL_DEVICE_IDS="${IDS[i]}" "$@")
  if ((i == 0)); then log=(">(tee $(quote "$LOG_DIR/process-0.log"))"); else log=("$(quote "$LOG_DIR/process-$i.log")"); fi
  if ((DRY_RUN)); then
    echo "$(quote "${proc[@]}") > ${log[0]} 2>&1 &"
    continue
  fi
  echo "+ $(quote "${proc[@]}") > ${log[0]} 2>&1 &" >&2
  if ((i == 0)); then
    "${proc[@]}" > >(tee "$LOG_DIR/process-0.log") 2>&1 &
  else
    "${proc[@]}" > "$LOG_DIR/process-$i.log" 2>&1 &
  fi
  pid_of[$i]=$!
done
((!DRY_RUN)) || exit 0

# SIGTERM or Ctrl-C here: every process saves a checkpoint and exits 143.
trap 'kill -TERM "${pid_of[@]}" 2> /dev/null || true' TERM INT
code=0
for ((i = 0; i < count; i++)); do
  while true; do  # `wait` returns early when a trapped signal arrives
    rc=0
    wait "${pid_of[$i]}" || rc=$?
    kill -0 "${pid_of[$i]}" 2> /dev/null || break
  done
  ((code)) || code=$rc  # process 0's code first: it is the one that reports
done
exit "$code"
