"""The training loop shared by every task (pretraining, translation, ...).

A task builds a `Setup` (data, model, mesh, jitted step, an evaluation it can
compile); `run` trains it until a stop condition. The loop does no Python work
per step beyond fetching the next host batch; it synchronises with the device
only at log, eval and checkpoint points, and counts the seconds in between as
training seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax

from tl_jax.errors import TrainingDiverged, UserError
from tl_jax.parallel import distributed
from tl_jax.parallel import sharding as shd
from tl_jax.train import flops
from tl_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from tl_jax.train.metrics import MetricWriter, format_seconds, last_devices, truncate_after
from tl_jax.train.horizon import SecondsHorizon
from tl_jax.train.optimizer import applied_updates, horizon_end
from tl_jax.train.stopwatch import Stopwatch, Timer

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the run stopped early but saved everything
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: likewise, after Ctrl-C
# With train.on_nonfinite=skip, this many skipped steps in a row still stop the run: by then the
# model, not a batch, is broken (e.g. a learning rate that blew the weights up).
SKIP_LIMIT = 10


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


@dataclasses.dataclass
class Program:
  """A task's model, sharded state and jitted train step, apart from data and evaluation."""
  model: Any
  abstract_state: Any
  state_shardings: Any
  init_fn: Callable  # () -> a fresh, sharded TrainState
  batch_sharding: Any  # a sharding, or a tree of them matching the batch
  train_fn: Any  # jitted (state, batch) -> (state, metrics)
  flops_per_token: float


@dataclasses.dataclass
class Setup:
  """Everything the loop needs from a task, built once (tasks/base.py's Task.setup)."""
  config: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  program: Program
  loader: Any  # TrainLoader: .batch(step), .iterate(start, prefetch)
  tokens_per_step: int
  # (state) -> evaluate(params, step) -> {metric: value}; compiles everything it needs.
  compile_eval: Callable
  eval_keys: tuple = ("eval_loss",)  # shown on the console
  best: Any = None  # BestParams offered every eval (train/best.py), or None
  best_from_step: int = 0  # evals before this step never become best/
  best_split: str = ""  # recorded in best.json
  train_tokens: int | None = None  # the training data's size, on the run's first metrics line


def sharded_state(init_fn, mesh, rules, seed: int):
  """(abstract unboxed state, its shardings, a jitted `() -> init_fn(seed)` that places it).

  The seed is an argument of the compiled init, not a constant in it: every seed then runs one
  program, which the persistent compilation cache keeps (on a GPU a 12 x 768 init compiled for
  tens of seconds per seed, before the run's clock starts)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = shd.logical_state_shardings(init_fn, mesh, rules, seed)
  jitted = jax.jit(lambda s: nn.meta.unbox(init_fn(s)), out_shardings=shardings)
  return nn.meta.unbox(abstract), shardings, functools.partial(jitted, seed)


def peak_memory_note() -> str:
  """Peak memory of the first local device, where the backend reports it (GPU, TPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return f" | peak device memory {peak / 2**30:.1f} GiB" if peak else ""


class _Preemption:
  """Turns SIGTERM (a pre-empted machine) and a first SIGINT (Ctrl-C) into a flag the loop
  checks after each step, so the run saves what it trained before it exits; a second SIGINT
  interrupts at once."""

  def __init__(self):
    self.requested = False
    self.signal: int | None = None  # the first one received here

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.signal == signal.SIGINT:
      raise KeyboardInterrupt
    if signum == signal.SIGINT:
      print("tl-jax: Ctrl-C: saving a checkpoint of the step being trained, then stopping "
            "(Ctrl-C again stops at once, losing the steps since the last checkpoint)",
            file=sys.stderr, flush=True)
    self.signal = self.signal or signum
    self.requested = True

  @property
  def name(self) -> str:
    return "SIGINT (Ctrl-C)" if self.signal == signal.SIGINT else "SIGTERM"

  @property
  def exit_code(self) -> int:  # 128 + the signal; one from another process counts as SIGTERM
    return INTERRUPTED_EXIT_CODE if self.signal == signal.SIGINT else PREEMPTED_EXIT_CODE

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


def fp8_compile_hint(fp8: bool, backend: str, xla_flags: str) -> str | None:
  """The flag that takes fp8's extra GPU compile away, for a run that has fp8 on without it."""
  if not fp8 or backend != "gpu" or "xla_gpu_autotune_level" in xla_flags:
    return None
  # On one H100 (2026-12-07) RoBERTa-large's fp8 step compiled in 81.0 s at the default level and
  # 46.6 s at level 1, at the same speed (docs/BENCHMARKS.md).
  return ("note: with model.fp8, XLA's autotuner spends extra compile time checking each fp8 "
          "matmul candidate's output; XLA_FLAGS=--xla_gpu_autotune_level=1 skips those checks "
          "(on an H100, RoBERTa-large compiled in 47 s instead of 81 s, at the same speed)")


def run(setup: Setup, workdir: str, on_ready=None) -> int:
  """Trains until a stop condition; returns the process exit code.

  `on_ready` is called once the data, mesh and checkpoint are known to be usable,
  before anything in the workdir changes (the CLI writes config.json there).
  Raises TrainingDiverged (a non-finite loss or state; the last good checkpoint is
  kept) and UserError (e.g. a checkpoint that cannot be written).
  """
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                      setup.config.checkpoint.keep, setup.config.checkpoint.async_save)
  closers = [ckpt.close]
  try:
    # From the restore to the last save: a SIGTERM or Ctrl-C while compiling or saving must not
    # kill the process in the middle of a write.
    with _Preemption() as preemption:
      code = _run(setup, workdir, on_ready, ckpt, closers, preemption)
  except BaseException:
    for close in reversed(closers):
      try:  # a save still in flight completes; the failure being raised is the one to report
        close()
      except Exception:
        pass
    raise
  for close in reversed(closers):
    close()
  return code


def _run(setup: Setup, workdir: str, on_ready, ckpt: Checkpointer, closers: list,
         preemption: _Preemption) -> int:
  cfg, mesh = setup.config, setup.mesh
  is_main = jax.process_index() == 0
  skip_nonfinite = cfg.train.on_nonfinite == "skip"
  single_process = jax.process_count() == 1

  with jax.set_mesh(mesh), nn.logical_axis_rules(setup.rules):
    program = setup.program
    restored = ckpt.restore(abstract_with_shardings(program.abstract_state, program.state_shardings),
                            set_aside=True)
    if restored is None:  # the clock starts before the init, whose compile is part of the run
      watch = Stopwatch()
      state = program.init_fn()
    else:
      state, meta = restored
      watch = Stopwatch.from_dict(meta["stopwatch"])
    start = int(state.step)
    if start:
      log(f"resumed from step {start} ({format_seconds(watch.train)} of training)")
    ckpt.ensure_writable()
    if on_ready is not None and is_main:
      on_ready()
    if start >= cfg.train.max_steps:
      log(f"nothing to do: the run already reached train.max_steps={cfg.train.max_steps}")
      return 0
    # A finished run stopped by its budget or its seconds horizon: running on would add a step.
    if cfg.train.max_train_seconds and watch.train >= cfg.train.max_train_seconds:
      log(f"nothing to do: the run already used its budget train.max_train_seconds="
          f"{cfg.train.max_train_seconds:g}")
      return 0
    if start and start == horizon_end(state.opt_state):
      log(f"nothing to do: the run already reached the end of its schedule (step {start})")
      return 0
    if is_main:  # lines of a killed session past the checkpoint; all of them with none to resume
      truncate_after(workdir, start if restored is not None else -1)
    writer = MetricWriter(workdir, enabled=is_main)
    closers.append(writer.close)

    with Timer() as t:
      example = shd.abstract_batch(setup.loader.batch(start), program.batch_sharding)
      train_fn = program.train_fn.lower(state, example).compile()
      evaluate = setup.compile_eval(state)
    watch.compile += t.seconds
    devices = f"{mesh.devices.size} x {mesh.devices.flat[0].device_kind}"
    log(f"compiled in {t.seconds:.1f}s on {devices} (mesh {dict(mesh.shape)})")
    hint = fp8_compile_hint(cfg.model.fp8, mesh.devices.flat[0].platform,
                            os.environ.get("XLA_FLAGS", ""))
    if hint:
      log(hint)
    before = last_devices(workdir) if start and is_main else None  # only the main one writes it
    if before and before != devices:
      log(f"warning: this run trained on {before} up to step {start} and resumes on {devices}; "
          "its training seconds mix the two, so compare them with other runs' only with that in "
          "mind (the report names both)")

    tokens_per_step = setup.tokens_per_step
    flops_per_step = tokens_per_step * program.flops_per_token
    peak = flops.device_peak_flops(cfg.train.peak_tflops)
    peak_total = peak * mesh.devices.size if peak else None

    def checkpoint(step: int, wait: bool = False):
      with Timer() as t:
        ckpt.save(step, state, {"stopwatch": watch.to_dict(), "data_position": step,
                                "seed": cfg.train.seed})
        if wait:
          ckpt.wait()
      watch.checkpoint += t.seconds
      return time.perf_counter()

    # Each session's first line says what it ran on: training seconds measure the devices as much
    # as the model, and a report must not set seconds of an H100 beside seconds of an H200.
    # The model's size too: the report labels sizes by it, and only a masked LM's can be
    # counted from its config alone.
    first_line = {"devices": devices,
                  "params": sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))}
    if setup.train_tokens:
      first_line["train_tokens"] = setup.train_tokens

    def record(step: int, values: dict):
      line = {"step": step, **watch.to_dict(), **values, **first_line}
      first_line.clear()
      writer.write(line)
      return line

    metric = setup.best.metric if setup.best is not None else None

    def run_eval(step: int):
      with Timer() as t:
        values = evaluate(state.params, step)
        improved = (setup.best is not None and step >= setup.best_from_step
                    and values.get(metric) is not None
                    and setup.best.offer(state.params, step, values[metric],
                                         **({"split": setup.best_split} if setup.best_split else {})))
      watch.eval += t.seconds
      line = record(step, values)
      log(f"step {step} | {eval_summary(setup, line)}" + (f" | new best {metric}" if improved else ""))
      return line

    # While restoring or compiling: nothing new to save. Agreed, so that a signal reaching one
    # process here stops them all, rather than leaving the others waiting in the first sync.
    if distributed.agree({}, {"preempted": preemption.requested})["preempted"]:
      log(f"stopped at step {start}: {preemption.name} before training began; re-run the same "
          "command to resume")
      return preemption.exit_code

    eval_enabled = cfg.eval.every_steps + cfg.eval.every_seconds > 0
    last_eval_step = None
    if start == 0 and eval_enabled:
      run_eval(0)
      last_eval_step = 0

    last_sync = time.perf_counter()
    last_ckpt_time = last_sync
    next_eval_at = next_mark(watch.train, cfg.eval.every_seconds)
    window_start_step = start
    # Where a seconds-based limit (budget, timed eval) falls due; the first step measures the pace.
    timed = cfg.train.max_train_seconds or cfg.eval.every_seconds
    next_timed_step = start + 1 if timed else math.inf
    metrics = None
    step = start
    exit_code = 0
    stop_reason = f"reached train.max_steps={cfg.train.max_steps}"
    # train.on_nonfinite=skip: skipped steps so far (the state knows), and how many in a row.
    skipped = start - int(jax.device_get(applied_updates(state.opt_state))) if skip_nonfinite else 0
    skipped_in_a_row = 0
    ckpt_owed = False  # a checkpoint fell due at a skipped step: save at the next good sync
    horizon = SecondsHorizon(cfg.train, state.opt_state)  # train.schedule_horizon=seconds' end
    syncs = 0
    batches = setup.loader.iterate(start, cfg.data.prefetch)
    synced_good = start  # the last step synced with a finite loss (or skipped, keeping the state)
    try:
      while step < cfg.train.max_steps:
        _, host_batch = next(batches)
        state, metrics = train_fn(state, shd.global_batch(host_batch, program.batch_sharding))
        step += 1

        eval_by_steps = bool(cfg.eval.every_steps) and step % cfg.eval.every_steps == 0
        ckpt_by_steps = step % cfg.checkpoint.every_steps == 0
        ckpt_by_clock = bool(cfg.checkpoint.every_seconds) and (
            time.perf_counter() - last_ckpt_time >= cfg.checkpoint.every_seconds)
        last = step == cfg.train.max_steps
        # Only step counts and agreed seconds (below) say when to sync, so every process syncs at
        # the same steps; one process alone may also sync on its own clock or on SIGTERM.
        sync_due = (step % cfg.train.log_every == 0 or eval_by_steps or ckpt_by_steps or last
                    or step >= next_timed_step or step == horizon.end)
        if not (sync_due or (single_process and (ckpt_by_clock or preemption.requested))):
          continue

        # Synchronise: everything since the last sync was training.
        values = jax.device_get(metrics)
        now = time.perf_counter()
        agreed = distributed.agree({"window": now - last_sync, "ckpt_by_clock": ckpt_by_clock},
                                   {"preempted": preemption.requested})
        window, preempted = agreed["window"], agreed["preempted"]
        ckpt_due = ckpt_by_steps or bool(agreed["ckpt_by_clock"])
        watch.train += window
        # Timed evals read the clock just synced, so one falls on the step its mark comes due.
        eval_due = eval_by_steps or bool(cfg.eval.every_seconds) and watch.train >= next_eval_at
        steps_done = step - window_start_step
        finite = math.isfinite(float(values["loss"])) and math.isfinite(float(values["grad_norm"]))
        if finite or skip_nonfinite:
          synced_good = step
        extra = {}
        if skip_nonfinite:
          newly = step - int(jax.device_get(applied_updates(state.opt_state))) - skipped
          skipped += newly
          skipped_in_a_row = (skipped_in_a_row + steps_done if newly == steps_done
                              else (0 if finite else 1))
          extra["skipped_steps"] = skipped
        syncs += 1
        opt_state, note = horizon.at_sync(state.opt_state, step, watch.train, window / steps_done)
        if note:
          state = state.replace(opt_state=opt_state)
          extra["schedule_end_step"] = horizon.end
          log(note)
        # A sync on the way to a timed step (timed_step's halves) with nothing else due writes no
        # line: those come every few steps near a mark and would crowd the log. A session's first
        # sync (after its first, slower, step) does.
        budget = cfg.train.max_train_seconds
        budget_spent = bool(budget) and watch.train >= budget
        if (syncs == 1 or step % cfg.train.log_every == 0 or eval_due or ckpt_due or ckpt_owed or last
            or preempted or not finite or budget_spent or horizon.due(step)
            or "schedule_end_step" in extra):
          tokens_per_second = steps_done * tokens_per_step / window
          mfu = flops_per_step * steps_done / window / peak_total if peak_total else None
          line = record(step, {"loss": float(values["loss"]),
                               "learning_rate": float(values["learning_rate"]),
                               "grad_norm": float(values["grad_norm"]),
                               "tokens_per_second": tokens_per_second, "mfu": mfu, **extra})
          remaining = (cfg.train.max_steps - step) * window / steps_done
          if cfg.train.max_train_seconds:
            remaining = min(remaining, cfg.train.max_train_seconds - watch.train)
          log(f"step {step}/{cfg.train.max_steps} | loss {line['loss']:.4f} | "
              f"{tokens_per_second / 1e3:.1f}k tok/s" + (f" | mfu {mfu:.2f}" if mfu else "") +
              (f" | skipped {skipped}" if skipped else "") +
              f" | train {format_seconds(watch.train)} | ETA {format_seconds(remaining)}")

        if not finite and not skip_nonfinite:
          when = f"step {step}" if steps_done == 1 else f"a step in {window_start_step + 1}..{step}"
          raise TrainingDiverged(
              f"the loss became non-finite at {when}; lower train.learning_rate, check the data, or "
              "set train.on_nonfinite=skip to drop such steps (a changed config needs --override), "
              f"then re-run: the run resumes from {ckpt.kept()}.")
        if skipped_in_a_row >= SKIP_LIMIT:
          raise TrainingDiverged(
              f"the last {skipped_in_a_row} steps up to step {step} all had a non-finite loss and "
              "were skipped, so the model itself has diverged; lower train.learning_rate (a changed "
              f"config needs --override), then re-run: the run resumes from {ckpt.kept()}.")

        if eval_due:
          last_eval_step = step
          next_eval_at = next_mark(watch.train, cfg.eval.every_seconds)
          eval_line = run_eval(step)
          if cfg.train.target_eval_loss and eval_line["eval_loss"] <= cfg.train.target_eval_loss:
            stop_reason = f"eval_loss reached train.target_eval_loss={cfg.train.target_eval_loss}"
            break
        if cfg.train.max_train_seconds and watch.train >= cfg.train.max_train_seconds:
          stop_reason = f"used the budget train.max_train_seconds={cfg.train.max_train_seconds}"
          break
        if horizon.due(step):
          stop_reason = (f"reached the end of its schedule (step {horizon.end}, fitted to "
                         f"train.max_train_seconds={cfg.train.max_train_seconds})")
          break
        if preempted:
          stop_reason = f"{preemption.name}: checkpoint saved; re-run the same command to resume"
          exit_code = preemption.exit_code
          break
        # A step just skipped may be a weight blow-up in the making: the checkpoint waits for a
        # sync whose step was good.
        wants_ckpt = ckpt_due or ckpt_owed
        ckpt_owed = wants_ckpt and not finite
        if wants_ckpt and finite:
          last_ckpt_time = checkpoint(step)
        next_timed_step = timed_step(cfg, step, window / steps_done, watch.train, next_eval_at,
                                     horizon.fix_at)
        last_sync = time.perf_counter()
        window_start_step = step
    except Exception as error:
      # `timeout`, Slurm and a terminal's Ctrl-C signal the run's whole process group, so a
      # compiler child (XLA's ptxas on a GPU) dies with it and fails the compile under way: an
      # error after the signal is the signal's doing. Where it struck at a sync (compiles
      # happen there: evals, the schedule's refit, checkpoints), the state is the step just
      # synced, checked finite and counted in watch.train: it is saved as the signal asked.
      # Anything else is re-raised: a refusal of ours (UserError), a state the failure consumed
      # (a step's donated buffers) or not yet synced, and any error with several processes,
      # where the others would wait for this one.
      if (not preemption.requested or not single_process or isinstance(error, UserError)
          or any(x.is_deleted() for x in jax.tree.leaves(state))
          or int(jax.device_get(state.step)) != synced_good):
        raise
      step = synced_good
      what = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
      log(f"error after {preemption.name}, taken as its doing: {type(error).__name__}: {what}")
      stop_reason = (f"{preemption.name} (and the error it caused): checkpoint saved; re-run the "
                     "same command to resume")
      exit_code = preemption.exit_code

    del batches  # stops the prefetch thread
    if eval_enabled and last_eval_step != step and exit_code == 0:
      run_eval(step)  # every finished run ends with the eval loss it reached
    if ckpt.latest_step() != step:
      checkpoint(step, wait=True)
    ckpt.wait()
  log(f"stopped at step {step}: {stop_reason} | train {format_seconds(watch.train)}, compile "
      f"{format_seconds(watch.compile)}, eval {format_seconds(watch.eval)}, checkpoint "
      f"{format_seconds(watch.checkpoint)}, elapsed {format_seconds(watch.elapsed())}"
      + (f" | {skipped} steps skipped (non-finite loss)" if skipped else "")
      + peak_memory_note())
  return exit_code


def next_mark(train_seconds: float, every: float) -> float:
  """The first multiple of `every` training seconds after `train_seconds` (inf when 0). Timed
  evals fall on these marks rather than `every` after the last eval, so their small lateness
  does not add up over a run, and a resumed run keeps the uninterrupted run's marks."""
  return (math.floor(train_seconds / every) + 1) * every if every else math.inf


# A timed step further ahead than this many steps is approached by halves (timed_step).
APPROACH_STEPS = 8


def timed_step(cfg, step: int, step_seconds: float, train_seconds: float,
               next_eval_at: float, fix_horizon_at: float | None = None) -> float:
  """The step of the next sync on the way to the training-seconds budget, the next timed eval
  or the fixing of a seconds horizon (at `fix_horizon_at` training seconds), whichever comes
  first, at the pace measured since the last sync. Training seconds are only counted at syncs,
  so waiting for the next log line would overshoot a budget by up to `log_every` steps: equal
  budgets would not be equal. A wait of more than APPROACH_STEPS steps syncs halfway and aims
  again from there, so the last aim spans a few steps at the latest pace: on an H100 the pace
  of a 12+12 x 512 translator swung up to 2x between log lines, and aiming once put its timed
  evals up to 1.3 s past their marks (2026-12-06). Each halving costs one sync."""
  waits = []
  if fix_horizon_at is not None and fix_horizon_at > train_seconds:
    waits.append(fix_horizon_at - train_seconds)
  if cfg.train.max_train_seconds:
    waits.append(cfg.train.max_train_seconds - train_seconds)
  if cfg.eval.every_seconds:
    waits.append(next_eval_at - train_seconds)
  if not waits:
    return math.inf
  steps = min(waits) / max(step_seconds, 1e-9)
  return step + max(1, math.ceil(steps / 2 if steps > APPROACH_STEPS else steps))


def eval_summary(setup: Setup, line: dict) -> str:
  return " | ".join(f"{k} {line[k]:.4f}" for k in setup.eval_keys if line.get(k) is not None)
