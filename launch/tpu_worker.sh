#!/usr/bin/env bash
# On one Cloud TPU VM worker (launch/tpu_pod.sh calls it through `gcloud ... ssh`):
#
#   tpu_worker.sh start [--single] -- tl-jax COMMAND ...
#       starts the command detached from the ssh session (it survives a dropped connection),
#       its output appended to ~/tl_jax_run/log; does nothing if a run is already going here.
#       Every worker starts the same command and jax.distributed joins them into one job;
#       --single runs it on this worker alone, on its CPUs (the TPU chips of a multi-host
#       slice only work with every worker taking part), for tl-jax compress.
#   tpu_worker.sh follow
#       prints this attempt's log until the run ends, then exits with the run's exit code.
#   tpu_worker.sh stop
#       sends SIGTERM: the run saves a checkpoint and exits 143.
set -euo pipefail

RUN_DIR=${TL_JAX_RUN_DIR:-$HOME/tl_jax_run}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

running() {
  [[ -f $RUN_DIR/pid ]] && kill -0 "$(cat "$RUN_DIR/pid")" 2>/dev/null
}

case ${1:-} in
  start)
    shift
    single=0
    if [[ ${1:-} == --single ]]; then single=1; shift; fi
    if [[ ${1:-} == -- ]]; then shift; fi
    (($#)) || { echo "tpu_worker.sh: start needs a command after --" >&2; exit 2; }
    if running; then
      echo "tpu_worker.sh: a run is already going on $(hostname) (pid $(cat "$RUN_DIR/pid")); following it"
      exit 0
    fi
    # pip installs console scripts where a non-login ssh shell may not look: use the module.
    if [[ $1 == tl-jax ]]; then set -- python3 -m tl_jax.cli "${@:2}"; fi
    if ((single)); then
      set -- env TL_JAX_DISTRIBUTED=off JAX_PLATFORMS=cpu "$@"
    else
      set -- env TL_JAX_DISTRIBUTED=on "$@"
    fi
    mkdir -p "$RUN_DIR"
    rm -f "$RUN_DIR/rc"
    touch "$RUN_DIR/log"
    stat -c %s "$RUN_DIR/log" > "$RUN_DIR/offset"  # where this attempt's output begins
    echo "== $(date -Is) $(hostname): $*" >> "$RUN_DIR/log"
    cd "$REPO"
    # A new session: the run outlives this ssh connection, and `stop` can signal its whole group;
    # the wrapper outlives that signal to record the exit code.
    setsid nohup bash -c 'trap : TERM; "$@" >> "$0/log" 2>&1; echo $? > "$0/rc"' "$RUN_DIR" \
      "$@" < /dev/null > /dev/null 2>&1 &
    echo $! > "$RUN_DIR/pid"
    ;;
  follow)
    [[ -f $RUN_DIR/pid ]] || { echo "tpu_worker.sh: no run was started on $(hostname)" >&2; exit 2; }
    tail -c +"$(($(cat "$RUN_DIR/offset") + 1))" --pid="$(cat "$RUN_DIR/pid")" -F "$RUN_DIR/log"
    exit "$(cat "$RUN_DIR/rc" 2>/dev/null || echo 1)"
    ;;
  stop)
    if running; then kill -TERM -- "-$(cat "$RUN_DIR/pid")"; fi
    ;;
  *)
    echo "usage: tpu_worker.sh start [--single] -- tl-jax COMMAND ... | follow | stop" >&2
    exit 2
    ;;
esac
