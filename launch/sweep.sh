#!/usr/bin/env bash
# Each stage of a tl-jax sweep as a job of its own.
#
#   launch/sweep.sh --on=slurm|tpu|gpu [--dry-run] [LAUNCHER OPTIONS ...] -- \
#       --config=configs/sweeps/NAME.py[:VARIANT] --root=DIR [--config.a.b=V ...]
#
# `tl-jax sweep --print-only` lists the stages (it changes nothing, so it runs under --dry-run
# too); stage NAME becomes the job `tl-jax sweep ... --only=NAME`, started by the launcher
# named by --on with the LAUNCHER OPTIONS given here:
#   slurm  launch/slurm.sbatch: every stage submitted at once, each held until the job of the
#          stage it depends on (`# after:`) has succeeded (sbatch --dependency=afterok);
#          compress stages get one node and one GPU;
#   tpu    launch/tpu_pod.sh: the stages one after another on the same slice, compress on
#          worker 0 alone; --delete deletes the slice after the last stage;
#   gpu    launch/gpu_host.sh: the stages one after another on this host, compress as one process.
# `--only` keeps the sweep's bookkeeping under ROOT/.sweep: stages already done are skipped,
# so launching the same sweep again after a failure or a pre-emption resumes it. Stops at the
# first stage that fails (tpu, gpu). Run from the repository root.
set -euo pipefail
LAUNCHER=sweep.sh
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/lib.sh"

ON= OPTIONS=()
while (($#)); do
  case $1 in
    --on=*) ON=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; break ;;
    *) OPTIONS+=("$1") ;;  # the launcher's
  esac
  shift
done
[[ $ON == slurm || $ON == tpu || $ON == gpu ]] || die "--on=${ON:-?} is not one of slurm, tpu, gpu"
(($#)) || die "no sweep after --; e.g. -- --config=configs/sweeps/gpu_reduced.py --root=runs/reduced"
SWEEP=("$@")

lister=("${PYTHON:-python3}" -m tl_jax.cli sweep --print-only "${SWEEP[@]}")
note "the stages, from: $(quote "${lister[@]}")"
listing=$("${lister[@]}") || exit  # tl-jax has said why
NAMES=() AFTER=() KINDS=()
name= after=
while IFS= read -r line; do
  case $line in
    "# stage: "*) name=${line#"# stage: "}; after= ;;
    "# after: "*) after=${line#"# after: "} ;;
    "#"* | "") ;;
    *)
      read -r _ kind _ <<< "$line"  # tl-jax COMMAND ...
      NAMES+=("$name") AFTER+=("$after") KINDS+=("$kind")
      ;;
  esac
done <<< "$listing"
((${#NAMES[@]})) || die "tl-jax sweep --print-only listed no stages"

dry=()
((!DRY_RUN)) || dry=(--dry-run)
last=$((${#NAMES[@]} - 1))
declare -A JOB_OF
for i in "${!NAMES[@]}"; do
  name=${NAMES[i]} after=${AFTER[i]} kind=${KINDS[i]}
  job=(tl-jax sweep "${SWEEP[@]}" --only="$name")
  case $ON in
    slurm)
      options=("${OPTIONS[@]}" --job-name="tl-jax-${name//\//__}")
      [[ $kind != compress ]] || options+=(--nodes=1 --gpus-per-node=1)
      [[ -z $after ]] || options+=(--dependency=afterok:"${JOB_OF[$after]}")
      if ((DRY_RUN)); then
        JOB_OF[$name]=JOB$((i + 1))
        note "stage $name ($kind): its job id is JOB$((i + 1)) below"
        bash "$HERE/slurm.sbatch" "${options[@]}" --dry-run -- "${job[@]}"
      else
        id=$(bash "$HERE/slurm.sbatch" "${options[@]}" -- "${job[@]}")
        JOB_OF[$name]=${id%%;*}  # --parsable prints ID or ID;CLUSTER
        echo "stage $name ($kind): job ${JOB_OF[$name]}"
      fi
      ;;
    tpu | gpu)
      options=()
      for option in "${OPTIONS[@]}"; do
        case $option in
          --delete) ;;  # after the last stage only
          --per-gpu) [[ $kind == compress ]] || options+=("$option") ;;  # compress is one process
          *) options+=("$option") ;;
        esac
      done
      if [[ $ON == tpu ]]; then
        [[ $kind != compress ]] || options+=(--workers=0)
        if ((i == last)) && [[ " ${OPTIONS[*]} " == *" --delete "* ]]; then options+=(--delete); fi
      fi
      launcher=$HERE/tpu_pod.sh
      [[ $ON == tpu ]] || launcher=$HERE/gpu_host.sh
      note "stage $name ($kind)"
      code=0
      bash "$launcher" "${options[@]}" "${dry[@]}" -- "${job[@]}" || code=$?
      ((code == 0)) || { echo "sweep.sh: stage $name ended with exit code $code; launch the same sweep again to resume it." >&2; exit "$code"; }
      ;;
  esac
done
