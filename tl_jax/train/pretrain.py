"""Masked-LM pretraining: data, model and jitted steps for the shared loop."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from tl_jax.config import Config
from tl_jax.data import cache as token_cache
from tl_jax.data.masking import max_predictions
from tl_jax.data.loader import PackedSequences, TrainLoader, eval_batches
from tl_jax.data.sources import make_source
from tl_jax.models.encoder import MaskedLM, padded_vocab
from tl_jax.parallel import sharding as shd
from tl_jax.parallel.mesh import make_mesh
from tl_jax.parallel.rules import rules_for
from tl_jax.train import flops, loop
from tl_jax.train.best import BestParams
from tl_jax.train.loop import Setup, Timer, host_rows, log
from tl_jax.train.optimizer import optimizer, schedule
from tl_jax.train.state import init_state
from tl_jax.train.step import eval_step, train_step


def build(config: Config, workdir: str, devices=None) -> Setup:
  mesh = make_mesh(config, devices)  # mesh errors come before any data work or compilation
  rules = rules_for(config.parallel.rules)
  source = make_source(config.data)
  source.check()
  cache_dir = token_cache.default_cache_dir(config.data.cache_dir)

  with Timer() as t:
    tokenizer = loop.workdir_tokenizer(source, config.data, workdir, cache_dir)
    train_cache = token_cache.prepare(source, "train", tokenizer, config.data.max_train_tokens, cache_dir)
    eval_cache = token_cache.prepare(source, "eval", tokenizer, config.data.max_eval_tokens, cache_dir)
  log(f"data: {len(train_cache):,} train / {len(eval_cache):,} eval tokens, vocab "
      f"{tokenizer.vocab_size} ({t.seconds:.1f}s to prepare or load)")

  seq_len = config.data.seq_len
  loader = TrainLoader(PackedSequences(train_cache, seq_len), config.train.batch_size,
                       config.train.seed, jax.process_index(), jax.process_count())
  eval_data = eval_batches(PackedSequences(eval_cache, seq_len), config.eval.batch_size,
                           config.eval.num_batches)

  program = training_program(config, tokenizer.vocab_size, mesh, rules)
  model, state_shardings, batch_sharding = program.model, program.state_shardings, program.batch_sharding
  replicated = shd.replicated(mesh)
  eval_fn = jax.jit(functools.partial(eval_step, model=model, data=config.data,
                                      vocab_size=tokenizer.vocab_size, seed=config.eval.seed),
                    in_shardings=(state_shardings.params, batch_sharding, replicated),
                    out_shardings=replicated)

  best = BestParams(workdir, "eval_loss", higher_is_better=False)  # what `tl-jax finetune` may start from

  def compile_eval(state):
    example = loop.abstract_batch(host_rows(eval_data[0]), batch_sharding)
    compiled = eval_fn.lower(state.params, example, np.int32(0)).compile()

    def evaluate(params, step):
      total, count = 0.0, 0.0
      for i, batch in enumerate(eval_data):
        loss_sum, n = compiled(params, shd.global_batch(host_rows(batch), batch_sharding), np.int32(i))
        total, count = total + float(loss_sum), count + float(n)
      loss = total / max(count, 1.0)
      best.offer(params, step, loss)
      return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
    return evaluate

  return Setup(
      config=config, mesh=mesh, rules=rules, loader=loader,
      state_shardings=state_shardings, abstract_state=program.abstract_state,
      init_fn=program.init_fn, train_fn=program.train_fn, batch_sharding=batch_sharding,
      tokens_per_step=config.train.batch_size * seq_len, flops_per_token=program.flops_per_token,
      compile_eval=compile_eval, eval_keys=("eval_loss", "eval_perplexity"))


def training_program(config: Config, vocab_size: int, mesh, rules) -> loop.Program:
  """The model, its sharded state and the jitted train step on token batches [B, S]: what
  `tl-jax pretrain` runs and `bench/speed.py` times."""
  seq_len = config.data.seq_len
  model = MaskedLM(config.model, padded_vocab(vocab_size))
  tx = optimizer(config.train)
  init_fn = functools.partial(init_state, model, tx, config.train.seed, np.zeros((1, seq_len), np.int32))
  abstract, state_shardings, placed_init = loop.sharded_state(init_fn, mesh, rules)
  batch_sharding = shd.batch_sharding(mesh, rules)
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule(config.train),
                           data=config.data, vocab_size=vocab_size,
                           grad_accum=config.train.grad_accum)
  train_fn = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0)
  predictions = max_predictions(seq_len, config.data.mask_prob, config.data.max_predictions)
  return loop.Program(model=model, abstract_state=abstract, state_shardings=state_shardings,
                      init_fn=placed_init, batch_sharding=batch_sharding, train_fn=train_fn,
                      flops_per_token=flops.mlm_flops_per_token(config.model, model.vocab_size,
                                                                seq_len, predictions))


def run(config: Config, workdir: str, devices=None, on_ready=None) -> int:
  """Pretrains until a stop condition; returns the exit code. `devices` defaults to all
  (tests pass subsets to compare meshes in one process)."""
  return loop.run(build(config, workdir, devices), workdir, on_ready)
