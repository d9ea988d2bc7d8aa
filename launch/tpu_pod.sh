#!/usr/bin/env bash
# One tl-jax command on every worker of a Cloud TPU VM slice (or of several slices).
#
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --accelerator=TYPE [options] -- tl-jax COMMAND ...
#
# Run it from the repository root. Each step prints its command before running it:
#   1. the slice: reused when ready, created when absent, deleted and created again when it was
#      pre-empted; so after a pre-emption, re-running the same command resumes the run;
#   2. the code: this checkout (tracked and untracked files git does not ignore) copied to
#      ~/tl_jax on every worker, or --repo cloned there;
#   3. jax[tpu] and tl_jax (with the data extra) installed with pip;
#   4. --setup on every worker (e.g. mounting the file system that holds the workdir);
#   5. the command started on every worker, detached from ssh (launch/tpu_worker.sh);
#      jax.distributed joins the workers into one job; process 0's log is streamed here until
#      the run ends, and this script exits with the run's code (143: pre-empted, checkpoint
#      saved, re-run to resume);
#   6. with --delete, the slice deleted.
# The workdir must be on storage every worker mounts and that outlives the slice (Filestore
# NFS, a gcsfuse bucket): checkpoints are written there by all workers together.
#
# Options:
#   --name=NAME          the TPU VM, or the queued resource; --num-slices=N names its slices
#                        NAME-0 .. NAME-(N-1)
#   --zone=ZONE          e.g. us-central2-b
#   --accelerator=TYPE   e.g. v4-32, v5litepod-16, v6e-16
#   --version=RUNTIME    TPU software version (default tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite,
#                        v6e: v2-alpha-tpuv6e)
#   --project=PROJECT    default: gcloud's configured project
#   --spot               Spot capacity (cheaper, may be pre-empted at any time)
#   --preemptible        the older preemptible capacity (not with --queued)
#   --queued             request through queued resources: waits in line for capacity
#   --num-slices=N       multi-slice (needs --queued); pass --config.parallel.dcn_data=N to the command
#   --repo=URL           clone this repository instead of copying the checkout; --ref=REF (default main)
#   --setup=COMMAND      a shell command run on every worker before the command
#   --workers=all|0      all (default), or 0: worker 0 of the first slice alone, on its CPUs
#                        (single-process commands such as tl-jax compress)
#   --delete             delete the slice once the command has ended
#   --dry-run            print the commands and run none (the slice is taken as absent)
set -euo pipefail
LAUNCHER=tpu_pod.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME= ZONE= ACCEL= VERSION=tpu-ubuntu2204-base PROJECT= CAPACITY= QUEUED=0 SLICES=1
REPO_URL= REF=main SETUP= WORKERS=all DELETE=0
while (($#)); do
  case $1 in
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator=*) ACCEL=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --spot) CAPACITY=--spot ;;
    --preemptible) CAPACITY=--preemptible ;;
    --queued) QUEUED=1 ;;
    --num-slices=*) SLICES=${1#*=} ;;
    --repo=*) REPO_URL=${1#*=} ;;
    --ref=*) REF=${1#*=} ;;
    --setup=*) SETUP=${1#*=} ;;
    --workers=*) WORKERS=${1#*=} ;;
    --delete) DELETE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; break ;;
    *) die "unknown option '$1'; the options are listed at the top of launch/tpu_pod.sh" ;;
  esac
  shift
done

(($#)) || die "no command after --; e.g. -- tl-jax pretrain --config=configs/mlm.py:roberta-base --workdir=/mnt/shared/base"
[[ -n $NAME && -n $ZONE ]] || die "--name and --zone are required"
[[ $WORKERS == all || $WORKERS == 0 ]] || die "--workers=$WORKERS is not all or 0"
[[ $SLICES =~ ^[1-9][0-9]*$ ]] || die "--num-slices=$SLICES is not a positive number"
((SLICES == 1 || QUEUED)) || die "--num-slices=$SLICES needs --queued (multi-slice comes from queued resources)"
[[ $CAPACITY != --preemptible || $QUEUED == 0 ]] || die "queued resources take --spot, not --preemptible"

WHERE=(--zone="$ZONE")
[[ -z $PROJECT ]] || WHERE+=(--project="$PROJECT")
NODES=("$NAME")
if ((SLICES > 1)); then
  NODES=()
  for ((i = 0; i < SLICES; i++)); do NODES+=("$NAME-$i"); done
fi

# STATE of the slice (or queued resource): READY/ACTIVE, ABSENT, or what gcloud says.
slice_state() {
  local cmd
  if ((QUEUED)); then
    cmd=(gcloud compute tpus queued-resources describe "$NAME" "${WHERE[@]}" --format='value(state.state)')
  else
    cmd=(gcloud compute tpus tpu-vm describe "$NAME" "${WHERE[@]}" --format='value(state)')
  fi
  if ((DRY_RUN)); then
    quote "${cmd[@]}"
    STATE=ABSENT
    return
  fi
  echo "+ $(quote "${cmd[@]}")" >&2
  STATE=$("${cmd[@]}" 2>/dev/null) || STATE=ABSENT
  STATE=${STATE:-ABSENT}
}

delete_slice() {
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${WHERE[@]}" --quiet
  fi
}

create_slice() {
  [[ -n $ACCEL ]] || die "the slice $NAME does not exist yet: give --accelerator (e.g. v4-32) to create it"
  if ((QUEUED)); then
    local nodes=(--node-id="$NAME")
    ((SLICES == 1)) || nodes=(--node-count="$SLICES" --node-prefix="$NAME")
    run gcloud compute tpus queued-resources create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCEL" \
      --runtime-version="$VERSION" "${nodes[@]}" ${CAPACITY:+"$CAPACITY"}
  else
    run gcloud compute tpus tpu-vm create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCEL" \
      --version="$VERSION" ${CAPACITY:+"$CAPACITY"}
  fi
}

wait_until_active() {
  note "repeated every 30 s until the queued resource is ACTIVE:"
  slice_state
  while ((!DRY_RUN)) && [[ $STATE != ACTIVE ]]; do
    [[ $STATE != FAILED && $STATE != SUSPENDED ]] || die "queued resource $NAME is $STATE; delete it or re-run to request it again"
    echo "queued resource $NAME: $STATE" >&2
    sleep 30
    slice_state
  done
}

ensure_slice() {
  slice_state
  case $STATE in
    READY | ACTIVE) note "$NAME is $STATE: reusing it" ;;
    ABSENT) create_slice ;;
    WAITING_FOR_RESOURCES | PROVISIONING | ACCEPTED | CREATING) ;;
    *)
      note "$NAME is $STATE (pre-empted?): deleting and creating it again"
      delete_slice
      create_slice
      ;;
  esac
  if ((QUEUED)); then wait_until_active; fi
}

# on_workers WORKERS COMMAND: a shell command on those workers of every slice.
on_workers() {
  local workers=$1 command=$2 node
  for node in "${NODES[@]}"; do
    run gcloud compute tpus tpu-vm ssh "$node" "${WHERE[@]}" --worker="$workers" --command="$command"
    [[ $workers == all ]] || break  # one worker means worker 0 of the first slice
  done
}

ship_code() {
  if [[ -n $REPO_URL ]]; then
    on_workers all "[ -d ~/tl_jax/.git ] || git clone -q $(quote "$REPO_URL") ~/tl_jax; git -C ~/tl_jax fetch -q origin $(quote "$REF") && git -C ~/tl_jax checkout -q FETCH_HEAD"
    return
  fi
  local root archive node
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  archive=${TMPDIR:-/tmp}/tl_jax-$NAME.tgz
  run bash -c "git -C $(quote "$root") ls-files -z --cached --others --exclude-standard | tar -czf $(quote "$archive") -C $(quote "$root") --null -T -"
  for node in "${NODES[@]}"; do
    run gcloud compute tpus tpu-vm scp "$archive" "$node":tl_jax.tgz "${WHERE[@]}" --worker=all
  done
  on_workers all "mkdir -p ~/tl_jax && tar -xzf ~/tl_jax.tgz -C ~/tl_jax"
}

ensure_slice
ship_code
on_workers all 'python3 -m pip install -q -U "jax[tpu]" -e "$HOME/tl_jax[data]"'
[[ -z $SETUP ]] || on_workers all "$SETUP"
if [[ $WORKERS == all ]]; then
  on_workers all "bash ~/tl_jax/launch/tpu_worker.sh start -- $(quote "$@")"
else
  on_workers 0 "bash ~/tl_jax/launch/tpu_worker.sh start --single -- $(quote "$@")"
fi
code=0
run gcloud compute tpus tpu-vm ssh "${NODES[0]}" "${WHERE[@]}" --worker=0 \
  --command="bash ~/tl_jax/launch/tpu_worker.sh follow" || code=$?
if ((code == 143)); then
  echo "tpu_pod.sh: the run was pre-empted after saving a checkpoint; re-run the same command to resume." >&2
elif ((code == 255)); then
  echo "tpu_pod.sh: lost the connection to worker 0 (the slice may have been pre-empted); re-run the same command to resume or follow the run." >&2
fi
if ((DELETE)); then delete_slice; fi
exit "$code"
