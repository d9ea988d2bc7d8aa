"""Masked-LM pretraining (RoBERTa): packed token rows, dynamic masking on device, eval loss.

Scored by the masked-token cross-entropy on fixed eval batches with fixed masks (`eval.seed`),
reported with its perplexity; lower is better, and the lowest picks `best/`, which
`tl-jax finetune` may start from.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.data import cache as token_cache
from tl_jax.data.loader import PackedSequences, TrainLoader, eval_batches
from tl_jax.data.masking import mask_tokens, max_predictions, predicted_positions
from tl_jax.data.sources import make_source
from tl_jax.models.encoder import MaskedLM
from tl_jax.parallel import sharding as shd
from tl_jax.tasks.base import Task, TaskData
from tl_jax.tasks.scoring import Scoring
from tl_jax.tasks.workdir import trained_tokenizer
from tl_jax.train import flops
from tl_jax.train.loop import Timer, log
from tl_jax.train.step import accumulate_and_update, cross_entropy, split_micro, step_rng


def masked_lm_sums(model, params, inputs, targets, weights, deterministic: bool, k: int,
                   dropout_rng=None):
  """(sum of masked-token cross-entropy, number of masked tokens, log-probabilities at the
  scored positions, their weights); with `k`, the head runs at (up to k) selected positions
  per row only."""
  rngs = None if deterministic else {"dropout": dropout_rng}
  predict_at = None
  if k:
    predict_at, weights = predicted_positions(weights, k)
    targets = jnp.take_along_axis(targets, predict_at, axis=1)
  logits = model.apply({"params": params}, inputs, deterministic=deterministic, rngs=rngs,
                       predict_at=predict_at)
  loss_sum = jnp.sum(cross_entropy(logits, targets) * weights)
  return loss_sum, jnp.sum(weights), logits, weights


def train_step(state, tokens: jax.Array, *, model, tx, schedule, data, vocab_size: int,
               grad_accum: int):
  """One masked-LM optimizer step on a global batch [B, S] of token ids; masks drawn on device."""
  mask_rng, dropout_rng = jax.random.split(step_rng(state))
  # Masks are drawn for the whole batch, so they do not depend on how it is split.
  masked = mask_tokens(mask_rng, tokens, vocab_size, data.mask_prob, data.mask_token_frac,
                       data.random_token_frac)
  k = max_predictions(tokens.shape[1], data.mask_prob, data.max_predictions)

  def loss_sums(params, i, micro):
    return masked_lm_sums(model, params, *micro, False, k, jax.random.fold_in(dropout_rng, i))[:2]

  return accumulate_and_update(state, split_micro(masked, grad_accum), loss_sums, tx=tx,
                               schedule=schedule, grad_accum=grad_accum)


def eval_masks(tokens, batch_index, *, data, vocab_size: int, seed: int):
  """(inputs, targets, weights) of eval batch `batch_index`: the same masks every evaluation."""
  rng = jax.random.fold_in(jax.random.key(seed), batch_index)
  return mask_tokens(rng, tokens, vocab_size, data.mask_prob, data.mask_token_frac,
                     data.random_token_frac)


def eval_sums(params, tokens: jax.Array, batch_index, *, model, data, vocab_size: int, seed: int):
  """({loss, count}, log-probabilities at the scored positions, weights) with fixed masks."""
  inputs, targets, weights = eval_masks(tokens, batch_index, data=data, vocab_size=vocab_size,
                                        seed=seed)
  k = max_predictions(tokens.shape[1], data.mask_prob, data.max_predictions)
  loss, count, logits, weights = masked_lm_sums(model, params, inputs, targets, weights, True, k)
  return {"loss": loss, "count": count}, jax.nn.log_softmax(logits.astype(jnp.float32)), weights


def loss_metrics(sums: dict) -> dict:
  loss = sums["loss"] / max(sums["count"], 1.0)
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}


class MaskedLMTask(Task):
  command = "pretrain"
  console_keys = ("eval_loss", "eval_perplexity")
  module = MaskedLM

  def example_input(self):
    return np.zeros((1, self.config.data.seq_len), np.int32)

  def train_step(self, state, batch, *, model, tx, schedule, tokenizer):
    return train_step(state, batch, model=model, tx=tx, schedule=schedule, data=self.config.data,
                      vocab_size=tokenizer.vocab_size, grad_accum=self.config.train.grad_accum)

  def batch_shardings(self, mesh, rules):
    return shd.batch_sharding(mesh, rules)

  def flops_per_token(self, model) -> float:
    data = self.config.data
    predictions = max_predictions(data.seq_len, data.mask_prob, data.max_predictions)
    return flops.mlm_flops_per_token(self.config.model, model.vocab_size, data.seq_len, predictions)

  @functools.cached_property
  def _checked_source(self):
    source = make_source(self.config.data)
    source.check()
    return source

  def _sequences(self, split: str, tokenizer, max_tokens: int):
    data = self.config.data
    cache_dir = token_cache.default_cache_dir(data.cache_dir)
    cache = token_cache.prepare(self._checked_source, split, tokenizer, max_tokens, cache_dir, log)
    return cache, PackedSequences(cache, data.seq_len)

  def loader(self, tokenizer) -> TrainLoader:
    return self.train_loader(self._sequences("train", tokenizer, self.config.data.max_train_tokens)[1])

  def prepare(self, workdir: str, mesh, rules) -> TaskData:
    data = self.config.data
    source = self._checked_source
    with Timer() as t:
      tokenizer = trained_tokenizer(workdir, source, data,
                                    token_cache.default_cache_dir(data.cache_dir))
      train_cache, train = self._sequences("train", tokenizer, data.max_train_tokens)
      eval_cache, _ = self._sequences("eval", tokenizer, data.max_eval_tokens)
    log(f"data: {len(train_cache):,} train / {len(eval_cache):,} eval tokens, vocab "
        f"{tokenizer.vocab_size} ({t.seconds:.1f}s to prepare or load)")
    return dataclasses.replace(self.task_data(tokenizer, train, mesh, rules),
                               train_tokens=len(train_cache))

  def scoring(self, tokenizer, model, mesh, rules, *, compression: bool = False,
              max_examples: int = 0, batch_size: int = 0) -> Scoring:
    """The eval loss on `eval.num_batches` fixed batches of `eval.batch_size` rows, whose masks
    follow from the batch index; compression scores the same batches (`max_examples` keeps
    those that hold the first so many rows; `batch_size` is not used, as it would move the
    masks)."""
    cfg = self.config
    rows = cfg.eval.batch_size
    num_batches = cfg.eval.num_batches
    if max_examples:
      num_batches = min(num_batches, -(-max_examples // rows))
    _, sequences = self._sequences("eval", tokenizer, cfg.data.max_eval_tokens)
    batches = eval_batches(sequences, rows, num_batches)
    sums = functools.partial(eval_sums, model=model, data=cfg.data,
                             vocab_size=tokenizer.vocab_size, seed=cfg.eval.seed)
    return Scoring({"eval": batches}, sums, loss_metrics, shd.batch_sharding(mesh, rules),
                   examples=sum(len(b) for b in batches))

  def forward(self, model, params, batch, tokenizer):
    """The encoder and head on a training batch masked as the eval batches are."""
    inputs, _, _ = eval_masks(batch, 0, data=self.config.data, vocab_size=tokenizer.vocab_size,
                              seed=self.config.eval.seed)
    return model.apply({"params": params}, inputs, deterministic=True)
