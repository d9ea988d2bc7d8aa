"""Masked-LM pretraining: data, model and state set up, then the training loop.

The loop does no Python work per step beyond fetching the next host batch; it
synchronises with the device only at log, eval and checkpoint points, and
counts the seconds in between as training seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import signal
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from tl_jax.config import Config
from tl_jax.data import cache as token_cache
from tl_jax.data.loader import PackedSequences, TrainLoader, eval_batches
from tl_jax.data.sources import make_source
from tl_jax.data.tokenizer import MODEL_FILE, Tokenizer, cached_tokenizer
from tl_jax.models.encoder import MaskedLM, padded_vocab
from tl_jax.parallel import sharding as shd
from tl_jax.parallel.mesh import make_mesh
from tl_jax.parallel.rules import rules_for
from tl_jax.train import flops
from tl_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from tl_jax.train.metrics import MetricWriter, format_seconds, truncate_after
from tl_jax.train.optimizer import optimizer, schedule
from tl_jax.train.state import init_state
from tl_jax.train.step import eval_step, train_step
from tl_jax.train.stopwatch import Stopwatch, Timer

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the run stopped early but saved everything


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


@dataclasses.dataclass
class Setup:
  """Everything the loop needs, built once."""
  config: Config
  mesh: jax.sharding.Mesh
  rules: tuple
  tokenizer: Tokenizer
  model: MaskedLM
  loader: TrainLoader
  eval_data: list
  state_shardings: object
  abstract_state: object
  init_fn: object
  train_fn: object
  eval_fn: object
  batch_sharding: object


def workdir_tokenizer(source, config: Config, workdir: str, cache_dir: str) -> Tokenizer:
  """The run's tokenizer: the workdir's own copy if it has one, else trained (or cached) and copied."""
  path = os.path.join(workdir, "tokenizer", MODEL_FILE)
  if not os.path.exists(path):
    trained = cached_tokenizer(source, config.data, cache_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copy(trained.path, path + ".tmp")
    os.replace(path + ".tmp", path)
  return Tokenizer(path)


def build(config: Config, workdir: str, devices=None) -> Setup:
  mesh = make_mesh(config, devices)  # mesh errors come before any data work or compilation
  rules = rules_for(config.parallel.rules)
  source = make_source(config.data)
  source.check()
  cache_dir = token_cache.default_cache_dir(config.data.cache_dir)

  with Timer() as t:
    tokenizer = workdir_tokenizer(source, config, workdir, cache_dir)
    train_cache = token_cache.prepare(source, "train", tokenizer, config.data.max_train_tokens, cache_dir)
    eval_cache = token_cache.prepare(source, "eval", tokenizer, config.data.max_eval_tokens, cache_dir)
  log(f"data: {len(train_cache):,} train / {len(eval_cache):,} eval tokens, vocab "
      f"{tokenizer.vocab_size} ({t.seconds:.1f}s to prepare or load)")

  seq_len = config.data.seq_len
  loader = TrainLoader(PackedSequences(train_cache, seq_len), config.train.batch_size,
                       config.train.seed, jax.process_index(), jax.process_count())
  eval_data = eval_batches(PackedSequences(eval_cache, seq_len), config.eval.batch_size,
                           config.eval.num_batches)

  model = MaskedLM(config.model, padded_vocab(tokenizer.vocab_size))
  tx = optimizer(config.train)
  example = np.zeros((1, seq_len), np.int32)
  init_fn = functools.partial(init_state, model, tx, config.train.seed, example)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, state_shardings = shd.logical_state_shardings(init_fn, mesh, rules)
  batch_sharding = shd.batch_sharding(mesh, rules)
  replicated = shd.replicated(mesh)

  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule(config.train),
                           data=config.data, vocab_size=tokenizer.vocab_size,
                           grad_accum=config.train.grad_accum)
  train_fn = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)
  evaluate = functools.partial(eval_step, model=model, data=config.data,
                               vocab_size=tokenizer.vocab_size, seed=config.eval.seed)
  eval_fn = jax.jit(evaluate, in_shardings=(state_shardings.params, batch_sharding, replicated),
                    out_shardings=replicated)
  unboxed_init = jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=state_shardings)
  return Setup(config, mesh, rules, tokenizer, model, loader, eval_data, state_shardings,
               nn.meta.unbox(abstract), unboxed_init, train_fn, eval_fn, batch_sharding)


def peak_memory_note() -> str:
  """Peak memory of the first local device, where the backend reports it (GPU, TPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return f" | peak device memory {peak / 2**30:.1f} GiB" if peak else ""


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def evaluate(setup: Setup, eval_fn, params) -> dict:
  total, count = 0.0, 0.0
  for i, batch in enumerate(setup.eval_data):
    per_host = batch.shape[0] // jax.process_count()  # each host feeds its rows of the fixed batch
    rows = slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)
    loss_sum, n = eval_fn(params, shd.global_batch(batch[rows], setup.batch_sharding), np.int32(i))
    total, count = total + float(loss_sum), count + float(n)
  loss = total / max(count, 1.0)
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}


def run(config: Config, workdir: str, devices=None, on_ready=None) -> int:
  """Trains until a stop condition; returns the process exit code.

  `devices` (default: all) lets tests compare meshes of different sizes in one
  process. `on_ready` is called once the data, mesh and checkpoint are known to
  be usable, before anything in the workdir changes (the CLI writes config.json
  there).
  """
  setup = build(config, workdir, devices)
  cfg, mesh = setup.config, setup.mesh
  is_main = jax.process_index() == 0
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), cfg.checkpoint.keep,
                      cfg.checkpoint.async_save)

  with jax.set_mesh(mesh), nn.logical_axis_rules(setup.rules):
    restored = ckpt.restore(abstract_with_shardings(setup.abstract_state, setup.state_shardings))
    if restored is None:
      state, watch = setup.init_fn(), Stopwatch()
    else:
      state, meta = restored
      watch = Stopwatch.from_dict(meta["stopwatch"])
    start = int(state.step)
    if start:
      log(f"resumed from step {start} ({format_seconds(watch.train)} of training)")
    if on_ready is not None and is_main:
      on_ready()
    if start >= cfg.train.max_steps:
      log(f"nothing to do: the run already reached train.max_steps={cfg.train.max_steps}")
      ckpt.close()
      return 0
    if is_main:
      truncate_after(workdir, start)
    writer = MetricWriter(workdir, enabled=is_main)

    def batch_shape(rows):
      return jax.ShapeDtypeStruct((rows, cfg.data.seq_len), np.int32, sharding=setup.batch_sharding)
    with Timer() as t:
      train_fn = setup.train_fn.lower(state, batch_shape(cfg.train.batch_size)).compile()
      eval_fn = setup.eval_fn.lower(state.params, batch_shape(cfg.eval.batch_size), np.int32(0)).compile()
    watch.compile += t.seconds
    log(f"compiled in {t.seconds:.1f}s on {mesh.devices.size} x {jax.devices()[0].device_kind} "
        f"(mesh {dict(mesh.shape)})")

    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    flops_per_step = tokens_per_step * flops.mlm_flops_per_token(
        cfg.model, setup.model.vocab_size, cfg.data.seq_len)
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

    def record(step: int, values: dict):
      line = {"step": step, **watch.to_dict(), **values}
      writer.write(line)
      return line

    def run_eval(step: int):
      with Timer() as t:
        values = evaluate(setup, eval_fn, state.params)
      watch.eval += t.seconds
      return record(step, values)

    eval_enabled = cfg.eval.every_steps + cfg.eval.every_seconds > 0
    last_eval_step = None
    if start == 0 and eval_enabled:
      line = run_eval(0)
      last_eval_step = 0
      log(f"step 0 | eval_loss {line['eval_loss']:.4f}")

    last_sync = time.perf_counter()
    last_ckpt_time = last_sync
    last_eval_seconds = watch.train
    window_start_step = start
    metrics = None
    step = start
    exit_code = 0
    stop_reason = f"reached train.max_steps={cfg.train.max_steps}"
    with _Preemption() as preemption:
      batches = setup.loader.iterate(start, cfg.data.prefetch)
      while step < cfg.train.max_steps:
        _, host_batch = next(batches)
        state, metrics = train_fn(state, shd.global_batch(host_batch, setup.batch_sharding))
        step += 1

        eval_due = (cfg.eval.every_steps and step % cfg.eval.every_steps == 0) or (
            cfg.eval.every_seconds and watch.train - last_eval_seconds >= cfg.eval.every_seconds)
        ckpt_due = step % cfg.checkpoint.every_steps == 0 or (
            cfg.checkpoint.every_seconds and time.perf_counter() - last_ckpt_time >= cfg.checkpoint.every_seconds)
        last = step == cfg.train.max_steps
        if not (step % cfg.train.log_every == 0 or eval_due or ckpt_due or last
                or preemption.requested):
          continue

        # Synchronise: everything since the last sync was training.
        values = jax.device_get(metrics)
        now = time.perf_counter()
        window = now - last_sync
        watch.train += window
        steps_done = step - window_start_step
        tokens_per_second = steps_done * tokens_per_step / window
        mfu = flops_per_step * steps_done / window / peak_total if peak_total else None
        line = record(step, {"loss": float(values["loss"]), "learning_rate": float(values["learning_rate"]),
                             "grad_norm": float(values["grad_norm"]),
                             "tokens_per_second": tokens_per_second, "mfu": mfu})
        remaining = (cfg.train.max_steps - step) * window / steps_done
        if cfg.train.max_train_seconds:
          remaining = min(remaining, cfg.train.max_train_seconds - watch.train)
        log(f"step {step}/{cfg.train.max_steps} | loss {line['loss']:.4f} | "
            f"{tokens_per_second / 1e3:.1f}k tok/s" + (f" | mfu {mfu:.2f}" if mfu else "") +
            f" | train {format_seconds(watch.train)} | ETA {format_seconds(remaining)}")

        if not math.isfinite(line["loss"]):
          log(f"error: the loss became non-finite at step {step}; lower train.learning_rate or check "
              "the data. The last checkpoint is kept.")
          ckpt.close()
          writer.close()
          return 1

        if eval_due:
          last_eval_seconds, last_eval_step = watch.train, step
          eval_line = run_eval(step)
          log(f"step {step} | eval_loss {eval_line['eval_loss']:.4f} | "
              f"eval_perplexity {eval_line['eval_perplexity']:.2f}")
          if cfg.train.target_eval_loss and eval_line["eval_loss"] <= cfg.train.target_eval_loss:
            stop_reason = f"eval_loss reached train.target_eval_loss={cfg.train.target_eval_loss}"
            break
        if cfg.train.max_train_seconds and watch.train >= cfg.train.max_train_seconds:
          stop_reason = f"used the budget train.max_train_seconds={cfg.train.max_train_seconds}"
          break
        if preemption.requested:
          stop_reason = "SIGTERM: checkpoint saved; re-run the same command to resume"
          exit_code = PREEMPTED_EXIT_CODE
          break
        if ckpt_due:
          last_ckpt_time = checkpoint(step)
        last_sync = time.perf_counter()
        window_start_step = step

      del batches  # stops the prefetch thread
    if eval_enabled and last_eval_step != step and exit_code == 0:
      eval_line = run_eval(step)  # every finished run ends with the eval loss it reached
      log(f"step {step} | eval_loss {eval_line['eval_loss']:.4f}")
    if ckpt.latest_step() != step:
      checkpoint(step, wait=True)
    ckpt.close()
    writer.close()
  log(f"stopped at step {step}: {stop_reason} | train {format_seconds(watch.train)}, compile "
      f"{format_seconds(watch.compile)}, eval {format_seconds(watch.eval)}, checkpoint "
      f"{format_seconds(watch.checkpoint)}, elapsed {format_seconds(watch.elapsed())}"
      + peak_memory_note())
  return exit_code
