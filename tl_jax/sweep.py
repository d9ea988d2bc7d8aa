"""`tl-jax sweep`: a grid of runs, one workdir per point under a root, resumable.

    tl-jax sweep --config=configs/sweeps/NAME.py[:VARIANT] --root=DIR [--print-only] [--only=STAGE]
                 [--config.SECTION.FIELD=VALUE ...]

A sweep file (`configs/sweeps/*.py`) defines `get_sweep(variant) -> Sweep`: an ordered list
of stages, each one `tl-jax pretrain|translate|finetune|compress` command. Stage NAME works in
ROOT/NAME (a compress stage in the workdir of the stage it compresses); a finetuning stage
starts from (`--init`) the workdir of an earlier stage.

What the sweep keeps in ROOT/.sweep/:
  sweep.json          the stages that ran under this root; a sweep that defines one of them
                      differently is refused (the workdirs would mix two configs)
  NAME.done           JSON (argv, seconds, finish time), written when a stage exits 0; a stage
                      with its marker is skipped ('/' in names becomes '__')
  logs/NAME.log       the stage's output, appended to on every attempt, each attempt ending
                      with its process's seconds before its first line and after its last

Re-running the same sweep command resumes: finished stages are skipped and the interrupted
one is re-run, which resumes its own workdir from its last checkpoint (a compress stage skips
the points its compress.jsonl already holds). SIGTERM reaching the sweep is passed on to the
running stage, which saves a checkpoint and exits 143; the sweep then exits 143 too (Ctrl-C
alike, 130). The stage runs in a process group of its own, so a signal to the sweep's group
(`timeout`, a pre-empting scheduler, a terminal's Ctrl-C) reaches the stage only through the
sweep, and never its helper processes (a compiler killed mid-step would end the stage without
a checkpoint). `--only=STAGE` runs one stage whose dependencies are done (spreading a grid
over machines that share the root). Extra `--config.SECTION.FIELD=VALUE` flags are added
to every stage whose config has that field (e.g. the mesh: `--config.parallel.fsdp=8` reaches
pretraining and finetuning, not compression).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Sequence

from tl_jax.errors import UserError


COMMANDS = ("pretrain", "translate", "finetune", "compress")
# Which stage a command's --init / --workdir-sharing refers to must be a run of this kind.
_INIT_COMMANDS = ("pretrain",)
_TARGET_COMMANDS = ("finetune", "translate", "pretrain")  # every trained task compresses
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")

# ---------------------------------------------------------------------------
# What a sweep is.


@dataclasses.dataclass(frozen=True)
class Stage:
  """One command of a sweep.

  `init` names the stage whose workdir is finetuning's --init; `target` names the stage a
  compress stage works on (finetune, translate or pretrain; it shares that workdir). Override values may be given as
  numbers or booleans; `load_sweep` turns them into the text the command line takes.
  """
  name: str
  command: str  # pretrain | translate | finetune | compress
  config: str  # FILE:PRESET, relative to where the sweep runs, e.g. configs/mlm.py:d6-w512
  overrides: dict[str, str] = dataclasses.field(default_factory=dict)
  init: str | None = None
  target: str | None = None

  @property
  def depends_on(self) -> str | None:
    return self.init or self.target


@dataclasses.dataclass
class Sweep:
  name: str
  description: str
  stages: list[Stage]


def _text(value) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float) and value.is_integer():
    return str(int(value))  # 60.0 would not parse as an int field
  return str(value)


def seeded(make, preset: str, seeds: Sequence[int] = (), **kwargs) -> list[Stage]:
  """`make(preset, **kwargs)`'s stages once per seed: labelled LABEL/seedN (LABEL defaults to
  the preset), with train.seed=N in every stage that trains; without seeds, once, as `make`
  names them. The report groups the seeds of a size and shows their mean and spread."""
  if not seeds:
    return make(preset, **kwargs)
  label = kwargs.pop("label", None) or preset
  out = []
  for seed in seeds:
    out += [st if st.command == "compress" else
            dataclasses.replace(st, overrides={**st.overrides, "train.seed": seed})
            for st in make(preset, label=f"{label}/seed{seed}", **kwargs)]
  return out


def size_stages(size_preset: str, mlm_overrides: dict | None = None,
                finetune_config: str | None = None, finetune_overrides: dict | None = None,
                compress_config: str | None = None, compress_overrides: dict | None = None,
                prefix: str = "", label: str | None = None) -> list[Stage]:
  """pretrain (configs/mlm.py:SIZE) -> finetune from its best parameters -> compress, for one size.

  Stages are named PREFIX + LABEL + /pretrain, /finetune, /compress (LABEL defaults to the
  preset; give one where several sizes share a preset and differ by model overrides).
  Without `finetune_config` only the pretraining stage is made; without `compress_config`
  no compression. Several seeds: `seeded(size_stages, SIZE, seeds, ...)`.
  """
  base = prefix + (label or size_preset)
  stages = [Stage(f"{base}/pretrain", "pretrain", f"configs/mlm.py:{size_preset}",
                  dict(mlm_overrides or {}))]
  if finetune_config:
    # Budget-limited pretraining on small corpora overfits before it ends: start from its best.
    stages.append(Stage(f"{base}/finetune", "finetune", finetune_config,
                        {"init.checkpoint": "best", **(finetune_overrides or {})},
                        init=f"{base}/pretrain"))
    if compress_config:
      stages.append(Stage(f"{base}/compress", "compress", compress_config,
                          dict(compress_overrides or {}), target=f"{base}/finetune"))
  return stages


def translate_stages(preset: str, overrides: dict | None = None, compress_config: str | None = None,
                     compress_overrides: dict | None = None, prefix: str = "",
                     label: str | None = None) -> list[Stage]:
  """translate (configs/translate.py:PRESET) -> compress its best-BLEU parameters, for one shape.

  Stages are named PREFIX + LABEL + /translate and /compress (LABEL defaults to the preset).
  """
  base = prefix + (label or preset)
  stages = [Stage(f"{base}/translate", "translate", f"configs/translate.py:{preset}",
                  dict(overrides or {}))]
  if compress_config:
    stages.append(Stage(f"{base}/compress", "compress", compress_config,
                        dict(compress_overrides or {}), target=f"{base}/translate"))
  return stages


def parse_seconds(text: str, what: str) -> float:
  """'90', '90s', '30m', '24h' -> seconds (for budget variants)."""
  m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
  if not m:
    raise UserError(f"{what} {text!r} is not a duration; write seconds (120), or 30m, or 24h.")
  return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# ---------------------------------------------------------------------------
# Loading and checking a sweep file.


def load_sweep(spec: str) -> Sweep:
  """`configs/sweeps/NAME.py[:VARIANT]` -> its checked Sweep (override values as text)."""
  from tl_jax.config import file_function
  path, _, variant = spec.partition(":")
  sweep = file_function(path, "get_sweep", "sweep", "configs/sweeps/NAME.py")(variant or None)
  if not isinstance(sweep, Sweep):
    raise UserError(f"get_sweep in {path} returned {type(sweep).__name__}, not a tl_jax.sweep.Sweep.")
  sweep.stages = [dataclasses.replace(s, overrides={str(k): _text(v) for k, v in s.overrides.items()})
                  for s in sweep.stages]
  validate(sweep, path)
  return sweep


def validate(sweep: Sweep, where: str = "the sweep") -> None:
  if not sweep.stages:
    raise UserError(f"{where} defines no stages; get_sweep must return at least one Stage.")
  seen: dict[str, Stage] = {}
  for stage in sweep.stages:
    if not _NAME.fullmatch(stage.name):
      raise UserError(f"stage name {stage.name!r} in {where} is not a relative path of letters, "
                      "digits, '.', '_', '-' and '/'; rename it.")
    if stage.name in seen:
      raise UserError(f"{where} defines stage {stage.name!r} twice; stage names must be unique.")
    if stage.command not in COMMANDS:
      raise UserError(f"stage {stage.name!r} in {where} has unknown command {stage.command!r}; "
                      f"use one of {', '.join(COMMANDS)}.")
    if ":" not in stage.config:
      raise UserError(f"stage {stage.name!r} in {where} has config {stage.config!r} without a "
                      "preset; write FILE:PRESET, e.g. configs/mlm.py:tiny.")
    for field, command, allowed, role in (("init", "finetune", _INIT_COMMANDS, "starts from"),
                                          ("target", "compress", _TARGET_COMMANDS, "compresses")):
      ref = getattr(stage, field)
      if ref is None and stage.command == command:
        raise UserError(f"{command} stage {stage.name!r} in {where} needs {field}=, the earlier "
                        f"stage whose workdir it {role}.")
      if ref is not None and stage.command != command:
        raise UserError(f"stage {stage.name!r} in {where} sets {field}=, which only {command} "
                        "stages take; remove it.")
      if ref is not None and ref not in seen:
        raise UserError(f"stage {stage.name!r} in {where} has {field}={ref!r}, which is not an "
                        "earlier stage; define that stage before it.")
      if ref is not None and seen[ref].command not in allowed:
        raise UserError(f"stage {stage.name!r} in {where} has {field}={ref!r}, a "
                        f"{seen[ref].command} stage; it must name a {' or '.join(allowed)} stage.")
    seen[stage.name] = stage


def _has_field(root_type, dotted: str) -> bool:
  node = root_type
  for part in dotted.split("."):
    if not dataclasses.is_dataclass(node):
      return False
    hints = typing.get_type_hints(node)
    if part not in hints:
      return False
    node = hints[part]
  return not dataclasses.is_dataclass(node)


def with_overrides(sweep: Sweep, overrides: dict[str, str]) -> Sweep:
  """Adds command-line overrides to every stage whose config has the field."""
  if not overrides:
    return sweep
  from tl_jax.config import ROOTS  # plain dataclasses: no jax
  stages = list(sweep.stages)
  for key, value in overrides.items():
    hits = [i for i, s in enumerate(stages) if _has_field(ROOTS[s.command], key)]
    if not hits:
      raise UserError(f"--config.{key} is a field of none of this sweep's stages "
                      f"({', '.join(sorted({s.command for s in stages}))}); check the name.")
    for i in hits:
      stages[i] = dataclasses.replace(stages[i], overrides={**stages[i].overrides, key: value})
  return dataclasses.replace(sweep, stages=stages)


# ---------------------------------------------------------------------------
# Commands.


def workdir(sweep: Sweep, root: str, stage: Stage) -> str:
  return os.path.join(root, stage.target if stage.command == "compress" else stage.name)


def command(sweep: Sweep, root: str, stage: Stage) -> list[str]:
  argv = ["tl-jax", stage.command, f"--config={stage.config}",
          f"--workdir={workdir(sweep, root, stage)}"]
  if stage.init:
    argv.append(f"--init={os.path.join(root, stage.init)}")
  argv += [f"--config.{k}={v}" for k, v in stage.overrides.items()]
  return argv


def selected(sweep: Sweep, only: str | None) -> list[Stage]:
  """The stages that `only` (a stage name, or None for all) picks; UserError for an unknown name."""
  if only is None:
    return list(sweep.stages)
  names = {s.name: s for s in sweep.stages}
  if only not in names:
    raise UserError(f"--only={only} is not a stage of sweep {sweep.name}; its stages are "
                    f"{', '.join(names)}.")
  return [names[only]]


def print_commands(sweep: Sweep, root: str, only: str | None = None, out=None) -> None:
  out = out or sys.stdout
  stages = selected(sweep, only)
  print(f"# sweep {sweep.name}: {len(stages)} stage{'s' * (len(stages) != 1)} under {root}", file=out)
  for stage in stages:
    argv = command(sweep, root, stage)
    print(f"# stage: {stage.name}", file=out)  # launch/sweep.sh submits each stage as --only=NAME
    if stage.depends_on:
      print(f"# after: {stage.depends_on}", file=out)
    print(shlex.join(argv), file=out)


# ---------------------------------------------------------------------------
# Bookkeeping under ROOT/.sweep.


def _flat(name: str) -> str:
  return name.replace("/", "__")


def _state_dir(root: str) -> str:
  return os.path.join(root, ".sweep")


def marker_path(root: str, stage: Stage) -> str:
  return os.path.join(_state_dir(root), _flat(stage.name) + ".done")


def log_path(root: str, stage: Stage) -> str:
  return os.path.join(_state_dir(root), "logs", _flat(stage.name) + ".log")


def _write_json(path: str, data) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)  # machines sharing a root never see half a file


def _definition(stage: Stage) -> dict:
  return {"command": stage.command, "config": stage.config, "overrides": stage.overrides,
          "init": stage.init, "target": stage.target}


def record(sweep: Sweep, root: str) -> None:
  """Writes ROOT/.sweep/sweep.json, refusing a stage defined differently from before."""
  path = os.path.join(_state_dir(root), "sweep.json")
  known: dict[str, dict] = {}
  names: list[str] = []
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    names = saved.get("sweeps", [])
    known = {s["name"]: {k: v for k, v in s.items() if k != "name"} for s in saved["stages"]}
  for stage in sweep.stages:
    before = known.get(stage.name)
    if before is not None and before != _definition(stage):
      diff = [k for k in before if before[k] != _definition(stage)[k]]
      raise UserError(f"root {root} already ran stage {stage.name!r} with different "
                      f"{'/'.join(diff)} (see {path}); use another --root for this sweep.")
    known[stage.name] = _definition(stage)
  os.makedirs(os.path.join(_state_dir(root), "logs"), exist_ok=True)
  _write_json(path, {"sweeps": names + [sweep.name] * (sweep.name not in names),
                     "name": sweep.name, "description": sweep.description,
                     "stages": [{"name": n, **d} for n, d in known.items()]})


def _budget(stage: Stage) -> float | None:
  """The stage's training-seconds budget (overrides, else its preset), or None if it has none."""
  if "train.max_train_seconds" in stage.overrides:
    return float(stage.overrides["train.max_train_seconds"]) or None
  if stage.command == "compress":
    return None
  try:
    from tl_jax.config import load_preset
    return float(load_preset(stage.config).train.max_train_seconds) or None
  except Exception:  # a preset that cannot load fails properly when its command runs
    return None


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _eta(root: str, stages: list[Stage], remaining: list[Stage]) -> str:
  """'ETA ~12m30s' from the remaining stages' budgets (scaled by what finished stages took).

  Stages without a budget (compression, epoch-limited finetuning) are estimated by the mean
  time of finished stages of the same command, and otherwise counted as unknown.
  """
  took: dict[str, list[float]] = {}
  spent = budgeted = 0.0
  for stage in stages:
    path = marker_path(root, stage)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      done = json.load(f)
    took.setdefault(stage.command, []).append(done["seconds"])
    if done.get("budget_seconds"):
      spent, budgeted = spent + done["seconds"], budgeted + done["budget_seconds"]
  overhead = spent / budgeted if budgeted else 1.0  # compile, data, evals on top of training
  total, unknown = 0.0, 0
  for stage in remaining:
    budget = _budget(stage)
    if budget:
      total += budget * overhead
    elif stage.command in took:
      total += sum(took[stage.command]) / len(took[stage.command])
    else:
      unknown += 1
  if not total:
    return ""
  if unknown:
    return f" | ETA > {_duration(total)} ({unknown} stage{'s' * (unknown > 1)} without a budget)"
  return f" | ETA ~{_duration(total)}"


# ---------------------------------------------------------------------------
# Running.


class StageFailed(UserError):
  """A stage exited non-zero; `exit_code` is its code (143: pre-empted, checkpoint saved)."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


def _run_stage(argv: list[str], log_file) -> int:
  """Runs one command, its output to the console and the log, line by line; returns its code.
  Ends with how long the process took before its first line and after its last: a stage's
  start-up (imports, devices, data) and wind-down (saves) cost lease time that the run's own
  `elapsed` does not see."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  spawned = time.monotonic()
  first = last = None
  # A session of its own: `timeout` and schedulers signal the sweep's whole process group,
  # which would also kill the stage's helpers (XLA's ptxas on a GPU) before it can checkpoint.
  proc = subprocess.Popen([sys.executable, "-m", "tl_jax.cli", *argv[1:]], cwd=os.getcwd(),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", bufsize=1, start_new_session=True)

  forwarded = []

  def forward(signum, frame):  # a pre-empted machine or Ctrl-C: the stage checkpoints and exits
    forwarded.append(signum)
    proc.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    for line in proc.stdout:
      last = time.monotonic()
      first = first or last
      sys.stdout.write(line)
      sys.stdout.flush()
      log_file.write(line)
      log_file.flush()
    code = proc.wait()
    if first is not None:
      ended = time.monotonic()
      timing = (f"stage process: {ended - spawned:.1f}s, its first line after "
                f"{first - spawned:.1f}s, its last {ended - last:.1f}s before it exited\n")
      sys.stdout.write(timing)
      log_file.write(timing)
    # A stage still starting up (before its run can checkpoint) dies of the signal; it had
    # nothing new to save, so that too is a pre-emption (143) or an interruption (130).
    return 128 - code if -code in forwarded else code
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def run(sweep: Sweep, root: str, only: str | None = None) -> int:
  """Runs the stages in order (or just `only`), skipping those already done; returns 0.

  Raises UserError (a StageFailed) when a stage exits non-zero; the sweep stops there.
  """
  names = {s.name: s for s in sweep.stages}
  chosen = selected(sweep, only)
  for stage in sweep.stages:  # before anything starts: a typo should not surface an hour in
    path = stage.config.partition(":")[0]
    if not os.path.isfile(path):
      raise UserError(f"stage {stage.name!r} uses config file {path!r}, which does not exist here; "
                      "run the sweep from the repository root.")
  if only is not None:
    dep = names[only].depends_on
    if dep and not os.path.exists(marker_path(root, names[dep])):
      raise UserError(f"stage {only} needs stage {dep} done first (no {marker_path(root, names[dep])}); "
                      f"run --only={dep} first, or the whole sweep.")
  record(sweep, root)
  start, skipped = time.monotonic(), 0
  for i, stage in enumerate(chosen, 1):
    index = sweep.stages.index(stage) + 1
    title = f"[{index}/{len(sweep.stages)}] {stage.name}"
    marker = marker_path(root, stage)
    if os.path.exists(marker):
      print(f"== {title}: skip (done)", flush=True)
      skipped += 1
      continue
    remaining = [s for s in chosen[i - 1:] if not os.path.exists(marker_path(root, s))]
    header = (f"== {title} | elapsed {_duration(time.monotonic() - start)}"
              f"{_eta(root, sweep.stages, remaining)}")
    argv = command(sweep, root, stage)
    wd = workdir(sweep, root, stage)
    log = log_path(root, stage)
    stage_start = time.monotonic()
    with open(log, "a") as log_file:
      print(header, flush=True)
      log_file.write(f"{header} | {datetime.datetime.now().isoformat(timespec='seconds')}\n"
                     f"$ {shlex.join(argv)}\n")
      log_file.flush()
      code = _run_stage(argv, log_file)
    seconds = time.monotonic() - stage_start
    if code != 0:
      rerun = "re-run the same sweep command to resume"
      if code in (143, 130):
        how = "was pre-empted" if code == 143 else "was interrupted by Ctrl-C"
        raise StageFailed(f"stage {stage.name} {how} (exit {code}, checkpoint saved; log "
                          f"{log}); {rerun} from its checkpoint.", code)
      how = f"was killed by signal {-code}" if code < 0 else f"failed with exit code {code}"
      raise StageFailed(f"stage {stage.name} {how} (log {log}); fix the cause and {rerun} "
                        "(finished stages are skipped).", code)
    _write_json(marker, {"stage": stage.name, "command": argv, "workdir": wd,
                         "seconds": round(seconds, 1), "budget_seconds": _budget(stage),
                         "finished": datetime.datetime.now().isoformat(timespec="seconds")})
  print(f"== sweep {sweep.name} finished: {len(chosen)} stage{'s' * (len(chosen) > 1)} "
        f"({skipped} skipped as done) in {_duration(time.monotonic() - start)}; workdirs under "
        f"{root}", flush=True)
  return 0


# ---------------------------------------------------------------------------
# Command line.

USAGE = """tl-jax sweep --config=configs/sweeps/NAME.py[:VARIANT] --root=DIR [--print-only] [--only=STAGE]
             [--config.SECTION.FIELD=VALUE ...]

Runs a sweep file's stages in order, one workdir each under DIR, skipping stages already done
(ROOT/.sweep/*.done); re-run the same command to resume. --print-only prints the commands, each
after `# stage: NAME` and its `# after: DEPENDENCY`, and runs nothing (launch/sweep.sh submits
them as jobs); --only runs one stage (its dependency must be done), or with --print-only prints
its command alone. --config.* flags are added to every stage whose config has that field (e.g.
--config.parallel.fsdp=8).
"""


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UserError(f"{message}; see tl-jax sweep --help.")


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["sweep"]:  # called with the whole command line of `tl-jax sweep ...`
    argv = argv[1:]
  if any(a in ("-h", "--help") for a in argv):
    print(USAGE)
    return 0
  try:
    parser = _Parser(prog="tl-jax sweep", usage=USAGE, add_help=False, allow_abbrev=False)
    parser.add_argument("--config", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--print-only", action="store_true")
    parser.add_argument("--only", default=None)
    args, rest = parser.parse_known_args(argv)
    from tl_jax.config import parse_overrides
    overrides = parse_overrides(rest, "see tl-jax sweep --help")
    sweep = with_overrides(load_sweep(args.config), overrides)
    if args.print_only:
      print_commands(sweep, args.root, args.only)
      return 0
    return run(sweep, args.root, args.only)
  except StageFailed as e:
    print(f"tl-jax: error: {e}", file=sys.stderr)
    return e.exit_code if e.exit_code in (143, 130) else 2
  except UserError as e:
    print(f"tl-jax: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("tl-jax: interrupted; re-run the same sweep command to resume.", file=sys.stderr)
    return 130


if __name__ == "__main__":
  # `python -m tl_jax.sweep`: run the imported module's main, so that the Sweep and Stage that
  # sweep files import are the classes it checks against (not copies made in __main__).
  from tl_jax import sweep as _module
  sys.exit(_module.main())
