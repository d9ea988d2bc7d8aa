"""Sentence(-pair) classification (GLUE-style) from a pretrained encoder.

The encoder's weights, shape and tokenizer come from an `--init` workdir (a `tl-jax pretrain`
run or a `tl-jax import-hf` import); the classification head starts fresh. Scored on every
example of each eval split (accuracy and eval loss); the most accurate parameters on the
first split are kept in `best/`. Pruning on a schedule and quantization-aware training
(compress/training.py) run inside the step when the config asks.

Rows of similar length are batched together and cut to one of at most `data.length_buckets`
lengths (training: data/classification.py's BucketedLoader; evaluation: rows in order of
length), so little of what is computed is padding; the step and the evaluation compile once
per length, before training. Padding is masked (attention lengths, first or masked-mean
pooling), so a row's logits do not depend on its batch's length beyond float rounding.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tl_jax.compress import apply as compress_apply
from tl_jax.compress import layout as compress_layout
from tl_jax.compress import training as compress_training
from tl_jax.config import FinetuneConfig
from tl_jax.data.classification import (LENGTH_MULTIPLE, BucketedLoader, EncodedExamples,
                                        bucket_lengths, encode, make_classification_source,
                                        row_lengths)
from tl_jax.data.loader import TrainLoader
from tl_jax.errors import UserError
from tl_jax.models.classifier import ENCODER_PARAMS, Classifier
from tl_jax.models.encoder import padded_vocab
from tl_jax.parallel import sharding as shd
from tl_jax.tasks.base import Task, TaskData
from tl_jax.tasks.scoring import Scoring
from tl_jax.tasks.workdir import Workdir, copied_tokenizer
from tl_jax.train import flops
from tl_jax.train.loop import Timer, log
from tl_jax.train.step import accumulate_and_update, split_micro, step_rng

MAX_UNKNOWN_FRACTION = 0.05  # more <unk> than this: the tokenizer was trained on other text
FIELDS = ("tokens", "types", "label")


# ---------------------------------------------------------------------------
# Steps.


def logits(model, params, batch, pad_id: int, deterministic: bool = True, rng=None):
  """The classifier's logits [B, labels] for a batch of encoded rows."""
  lengths = jnp.sum(batch["tokens"] != pad_id, axis=-1).astype(jnp.int32)
  return model.apply({"params": params}, batch["tokens"], deterministic=deterministic,
                     lengths=lengths, types=batch["types"],
                     rngs=None if deterministic else {"dropout": rng})


def train_step(state, batch: dict, *, model, tx, schedule, pad_id: int, grad_accum: int,
               compression=None):
  """One optimizer step; `compression` (compress/training.py) prunes on its schedule and runs
  the forward pass through fake quantization."""
  dropout_rng = step_rng(state)
  if compression is not None:
    state = compression.update_masks(state)

  def loss_sums(params, i, micro):
    if compression is not None:
      params = compression.forward(params, state.masks)
    out = logits(model, params, micro, pad_id, False, jax.random.fold_in(dropout_rng, i))
    losses = optax.softmax_cross_entropy_with_integer_labels(out, micro["label"])
    return jnp.sum(losses), jnp.asarray(losses.shape[0], jnp.float32)

  return accumulate_and_update(state, split_micro(batch, grad_accum), loss_sums, tx=tx,
                               schedule=schedule, grad_accum=grad_accum)


def eval_sums(params, batch: dict, index, *, model, pad_id: int, compression=None):
  """({loss, correct, count} over the rows whose weight is 1, the class log-probabilities, the
  weights); under quantization-aware training, of the quantized model."""
  if compression is not None:
    params = compression.forward(params, compression.derived_masks(params))
  out = logits(model, params, batch, pad_id)
  losses = optax.softmax_cross_entropy_with_integer_labels(out, batch["label"])
  correct = (jnp.argmax(out, axis=-1) == batch["label"]).astype(jnp.float32)
  w = batch["weight"]
  sums = {"loss": jnp.sum(losses * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}
  return sums, jax.nn.log_softmax(out), w


def accuracy_metrics(sums: dict) -> dict:
  n = max(sums["count"], 1.0)
  return {"eval_loss": sums["loss"] / n, "accuracy": sums["correct"] / n}


def length_order(tokens: np.ndarray, pad_id: int) -> np.ndarray:
  """Row indices from the shortest row to the longest, ties in row order."""
  return np.argsort(row_lengths(tokens, pad_id), kind="stable")


def eval_batches(rows: dict, batch_size: int, filler: np.ndarray, length_buckets: int = 0,
                 pad_id: int = 0) -> list[dict]:
  """All rows in batches of `batch_size`, each once with weight 1; the last is topped up with
  `filler` rows of weight 0 (a short real sequence, so no row has zero length).

  With `length_buckets`, the rows go in `length_order` and each batch is cut to the shortest of
  at most that many lengths (chosen for these batches by `bucket_lengths`) that holds its rows.
  """
  n = len(rows["label"])
  starts = range(0, n, batch_size)
  cut = [filler.shape[0]] * len(starts)
  if length_buckets:
    rows = {k: v[length_order(rows["tokens"], pad_id)] for k, v in rows.items()}
    lengths = row_lengths(rows["tokens"], pad_id)
    floor = row_lengths(filler[None], pad_id)[0]
    longest = [max(int(lengths[start:start + batch_size].max()), floor) for start in starts]
    buckets = np.asarray(bucket_lengths(longest, length_buckets, LENGTH_MULTIPLE, filler.shape[0]))
    cut = buckets[np.searchsorted(buckets, longest)].tolist()
  batches = []
  for start, length in zip(starts, cut):
    chunk = {k: v[start:start + batch_size] for k, v in rows.items()}
    short = batch_size - len(chunk["label"])
    weight = np.concatenate([np.ones(len(chunk["label"]), np.float32), np.zeros(short, np.float32)])
    if short:
      chunk = {"tokens": np.concatenate([chunk["tokens"], np.repeat(filler[None], short, 0)]),
               "types": np.concatenate([chunk["types"], np.zeros((short,) + filler.shape, np.int32)]),
               "label": np.concatenate([chunk["label"], np.zeros(short, np.int32)])}
    chunk = {k: v[:, :length] if v.ndim == 2 else v for k, v in chunk.items()}
    batches.append({**chunk, "weight": weight})
  return batches


class PerLengthStep:
  """A jitted train step for batches cut to any of `lengths` tokens: `lower(state, example)
  .compile()`, which the loop calls once before training, compiles it for every length (so the
  compile seconds are counted as such), runs each once (`warm`), and what it returns runs each
  batch with its length's."""

  def __init__(self, jitted, lengths, filler: np.ndarray):
    self.jitted, self.lengths, self.filler = jitted, tuple(lengths), filler

  def __call__(self, state, batch):
    return self.jitted(state, batch)

  def lower(self, state, example):
    def at(length):
      return {k: jax.ShapeDtypeStruct(v.shape[:1] + (length,), v.dtype, sharding=v.sharding)
              if len(v.shape) == 2 else v for k, v in example.items()}

    def compile():
      compiled = {n: self.jitted.lower(state, at(n)).compile() for n in self.lengths}
      if all(isinstance(x, jax.Array) for x in jax.tree.leaves(state)):
        for n, run in compiled.items():
          self.warm(run, state, at(n))
      return lambda state, batch: compiled[batch["tokens"].shape[1]](state, batch)
    return types.SimpleNamespace(compile=compile)

  def warm(self, run, state, example) -> None:
    """One call of a compiled length on filler rows and a copy of the state (the step donates
    it), result discarded. A first call costs more than later ones (~25 ms a step more over a
    `tiny` encoder's first 32 steps on a 2-core CPU, 2026-12-04): left to the loop, that time
    counts as training and a seconds horizon reads it as the pace."""
    def rows(key, spec):
      host = np.zeros(spec.shape, spec.dtype)
      if key == "tokens":
        host[:] = self.filler[:spec.shape[1]]
      return jax.make_array_from_callback(spec.shape, spec.sharding, lambda index: host[index])
    copy = jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), state)
    jax.block_until_ready(run(copy, {k: rows(k, v) for k, v in example.items()}))


def filler_row(tokenizer, seq_len: int) -> np.ndarray:
  """A short real sequence (<s></s>) that tops up the last eval batch."""
  filler = np.full((seq_len,), tokenizer.pad_id, np.int32)
  filler[:2] = tokenizer.bos_id, tokenizer.eos_id
  return filler


# ---------------------------------------------------------------------------
# The --init workdir and the recipe.


def check_vocabulary(init: Workdir, tokenizer, data) -> None:
  """The --init encoder must have been trained on this tokenizer, and on text like the task's."""
  pre = init.config.data
  if tokenizer.vocab_size != pre.vocab_size:
    raise UserError(f"the tokenizer in {init.path}/tokenizer has {tokenizer.vocab_size} pieces, "
                    f"but the model there was built for data.vocab_size={pre.vocab_size}; put back the "
                    "run's own tokenizer.")
  if data.source == "synthetic":
    imported = init.config.name.startswith("hf:")
    if pre.source != "synthetic" or imported:
      corpus = "an imported checkpoint" if imported else f"data.source={pre.source}"
      raise UserError(f"--init={init.path} was pretrained on {corpus}, so its vocabulary does "
                      "not cover the synthetic task; pretrain on the synthetic corpus or finetune "
                      "on tsv/tfds data.")
    if (pre.synthetic_seed, pre.synthetic_words) != (data.synthetic_seed, data.synthetic_words):
      raise UserError(f"--init={init.path} was pretrained on the synthetic language with seed "
                      f"{pre.synthetic_seed} and {pre.synthetic_words} words, but the task uses seed "
                      f"{data.synthetic_seed} and {data.synthetic_words} words; set data.synthetic_seed "
                      "and data.synthetic_words to match.")


def unknown_fraction(rows: dict, tokenizer) -> float:
  real = rows["tokens"] != tokenizer.pad_id
  return float(np.sum((rows["tokens"] == tokenizer.unk_id) & real) / max(np.sum(real), 1))


def resolve_steps(config: FinetuneConfig, num_train: int) -> FinetuneConfig:
  """A copy with max_steps from `epochs` and warmup from `warmup_fraction` (the config.json keeps
  the fractions)."""
  resolved = copy.deepcopy(config)
  t = resolved.train
  if t.epochs > 0:
    t.max_steps = max(1, math.ceil(t.epochs * num_train / t.batch_size))
  if t.warmup_fraction > 0:
    t.warmup_steps = round(t.warmup_fraction * t.max_steps)
  if t.learning_rate == 0:
    t.learning_rate = default_learning_rate(config.model.d_model)
  return resolved


def default_learning_rate(d_model: int) -> float:
  """RoBERTa finetunes base (768) at 1e-5..3e-5 and large at 1e-5; narrower models take larger steps."""
  return float(np.clip(2e-5 * 768 / d_model, 1e-5, 1e-4))


def training_compression(config: FinetuneConfig, model, max_steps: int):
  """The run's pruning / quantization-aware training (compress/training.py), or None; shape
  conditions (N:M blocks, quantization groups) are checked here, before anything compiles."""
  if config.prune.method == "none" and config.qat.method == "none":
    return None
  layouts = compress_layout.model_layouts(model, np.zeros((1, config.data.seq_len), np.int32))
  compress_apply.check_shapes(layouts, config.qat, config.prune)
  return compress_training.TrainingCompression(layouts, config.prune, config.qat, max_steps)


def describe_compression(config: FinetuneConfig, compression) -> None:
  p = config.prune
  if compression.pruning:
    target = f"{p.n}:{p.m}" if p.method == "nm" else f"sparsity {p.sparsity:g} ({p.schedule} schedule)"
    log(f"pruning {p.targets} to {target}, steps {compression.begin_step}..{compression.end_step}; "
        f"best parameters are kept from step {compression.end_step} on")
  if config.qat.method != "none":
    log(f"quantization-aware training: {config.qat.method} {config.qat.bits} bits on {config.qat.targets}")


# ---------------------------------------------------------------------------
# The task.


class ClassificationTask(Task):
  command = "finetune"

  def __init__(self, config: FinetuneConfig):
    super().__init__(config)
    self._labels = None
    self._compression = None  # set once the run's steps are known (prepare)
    self._buckets = None  # the training batches' lengths, once the loader is built
    self._mean_length = None  # real tokens per training row, likewise

  @property
  def console_keys(self) -> tuple[str, ...]:
    return ("eval_loss", "accuracy") + tuple(f"accuracy_{s}" for s in self._source().eval_splits[1:])

  def _source(self):
    return make_classification_source(self.config.data)

  @property
  def label_names(self) -> tuple[str, ...]:
    if self._labels is None:
      self._labels = tuple(self._source().label_names)
    return self._labels

  def model(self, vocab_size: int, *, training: bool = False):
    return Classifier(self.model_config(training), padded_vocab(vocab_size), len(self.label_names),
                      self.config.head.pooling)

  def example_input(self):
    return np.zeros((1, self.config.data.seq_len), np.int32)

  def compression(self, model):
    """The run's TrainingCompression, or None (before `prepare`, sized by config.train.max_steps:
    enough for the masks' structure, which is all a restore needs)."""
    if self._compression is None:
      self._compression = training_compression(self.config, model, self.config.train.max_steps)
    return self._compression

  def masked_subtree(self, model):
    compression = self.compression(model)
    return compression.masked if compression is not None else None

  def train_step(self, state, batch, *, model, tx, schedule, tokenizer):
    return train_step(state, batch, model=model, tx=tx, schedule=schedule, pad_id=tokenizer.pad_id,
                      grad_accum=self.config.train.grad_accum, compression=self.compression(model))

  def batch_shardings(self, mesh, rules):
    return {k: shd.batch_sharding(mesh, rules, 1 if k == "label" else 2) for k in FIELDS}

  def flops_per_token(self, model) -> float:
    return flops.encoder_flops_per_token(self.config.model, self.config.data.seq_len)

  def tokens_per_step(self) -> int:
    """The real (non-padding) tokens of a batch on average, once the data is read: tokens/s and
    MFU count text, not padding, with or without length buckets."""
    if self._mean_length is None:
      return super().tokens_per_step()
    return round(self.config.train.batch_size * self._mean_length)

  def program(self, tokenizer, mesh, rules):
    program = super().program(tokenizer, mesh, rules)
    if not self._buckets:
      return program
    return dataclasses.replace(program, train_fn=PerLengthStep(
        program.train_fn, self._buckets, filler_row(tokenizer, self.config.data.seq_len)))

  def best_from_step(self) -> int:
    # While sparsity still rises, the model is not yet the pruned one asked for.
    compression = self._compression
    return compression.end_step if compression is not None and compression.pruning else 0

  def frozen_masks(self, flat_params: dict, layouts: dict) -> dict:
    """Pruned while finetuning: its zeros stay zeros under any later compression."""
    if self.config.prune.method == "none":
      return {}
    return {p: flat_params[p] != 0 for p in compress_apply.prune_targets(layouts, self.config.prune)}

  # -- data ---------------------------------------------------------------------------

  def _encoded(self, split: str, tokenizer):
    data = self.config.data
    return encode(self._source().examples(split), tokenizer, data.seq_len, data.truncation,
                  self.config.model.type_vocab_size >= 2)  # BERT's [CLS] A [SEP] B [SEP]

  def loader(self, tokenizer) -> TrainLoader:
    rows, _ = self._encoded("train", tokenizer)
    return self._train_loader(rows, tokenizer)

  def _train_loader(self, rows: dict, tokenizer) -> TrainLoader:
    """Batches of the encoded training rows: by length (BucketedLoader) unless
    data.length_buckets=0, which pads every row to data.seq_len."""
    data, train = self.config.data, self.config.train
    examples = EncodedExamples(rows, data.seq_len)
    lengths = row_lengths(rows["tokens"], tokenizer.pad_id)
    self._mean_length = float(np.mean(lengths))
    if not data.length_buckets:
      self._buckets = None
      return self.train_loader(examples)
    self._buckets = bucket_lengths(lengths, data.length_buckets, LENGTH_MULTIPLE, data.seq_len)
    return BucketedLoader(examples, lengths, self._buckets, train.batch_size, train.seed,
                          jax.process_index(), jax.process_count())

  def init_workdir(self) -> Workdir:
    return Workdir.open(self.config.init.workdir, role="--init", commands=("pretrain",))

  def prepare(self, workdir: str, mesh, rules) -> TaskData:
    config, data = self.config, self.config.data
    init = self.init_workdir()
    source = self._source()
    source.check()
    check_vocabulary(init, init.tokenizer(), data)
    # Whether --init has the parameters asked for, before any data work.
    self._init_choice = None if config.init.from_scratch else init.choose(
        config.init.checkpoint, role="--init", field="init.checkpoint")
    with Timer() as t:
      tokenizer = copied_tokenizer(workdir, init)
      train_rows, train_truncated = self._encoded("train", tokenizer)
      model = self.model(tokenizer.vocab_size)
      scoring = self.scoring(tokenizer, model, mesh, rules)
    eval_counts = {split: sum(int(b["weight"].sum()) for b in batches)
                   for split, batches in scoring.splits.items()}
    unknown = unknown_fraction(train_rows, tokenizer)
    if unknown > MAX_UNKNOWN_FRACTION:
      raise UserError(f"the tokenizer of --init={init.path} maps {unknown:.0%} of this task's tokens "
                      "to <unk>: it was trained on other text; pretrain on text like the task's.")
    num_train = len(train_rows["label"])
    log(f"data: {num_train:,} train examples ({train_truncated:,} truncated to {data.seq_len} tokens), "
        + ", ".join(f"{split} {n:,}" for split, n in eval_counts.items())
        + f"; labels {', '.join(source.label_names)} ({t.seconds:.1f}s)")

    self.config = resolve_steps(config, num_train)
    train = self.config.train
    log(f"finetuning for {train.max_steps} steps of {train.batch_size} ("
        f"{train.max_steps * train.batch_size / num_train:.2f} epochs), warmup {train.warmup_steps}, "
        f"peak learning rate {train.learning_rate:g}")
    self._compression = training_compression(self.config, model, train.max_steps)
    if self._compression is not None:
      describe_compression(self.config, self._compression)
      scoring = self.scoring(tokenizer, model, mesh, rules)  # evaluates the compressed model
    loader = self._train_loader(train_rows, tokenizer)
    if self._buckets:
      real, computed = loader.positions(0)
      log(f"length buckets: training batches cut to {', '.join(map(str, self._buckets))} tokens, "
          f"{real / computed:.0%} of the positions computed real (padded to {data.seq_len}: "
          f"{self._mean_length / data.seq_len:.0%})")
    return TaskData(tokenizer, loader, scoring)

  def scoring(self, tokenizer, model, mesh, rules, *, compression: bool = False,
              max_examples: int = 0, batch_size: int = 0) -> Scoring:
    """Every example of every eval split (compression: the first split, its first
    `max_examples` examples), in batches of `eval.batch_size` (or `batch_size`)."""
    source = self._source()
    splits = source.eval_splits[:1] if compression else source.eval_splits
    filler = filler_row(tokenizer, self.config.data.seq_len)
    size = batch_size or self.config.eval.batch_size
    batches = {}
    for split in splits:
      rows, _ = self._encoded(split, tokenizer)
      if max_examples:
        rows = {k: v[:max_examples] for k, v in rows.items()}
      batches[split] = eval_batches(rows, size, filler, self.config.data.length_buckets,
                                    tokenizer.pad_id)
    sums = functools.partial(eval_sums, model=model, pad_id=tokenizer.pad_id,
                             compression=None if compression else self.compression(model))
    sharding = {**self.batch_shardings(mesh, rules), "weight": shd.batch_sharding(mesh, rules, 1)}
    examples = sum(int(b["weight"].sum()) for b in batches[splits[0]])
    return Scoring(batches, sums, accuracy_metrics, sharding, examples=examples)

  def forward(self, model, params, batch, tokenizer):
    return logits(model, params, batch, tokenizer.pad_id)

  def real_positions(self, batch, tokenizer):
    return batch["tokens"] != tokenizer.pad_id  # rows are padded to their batch's length

  # -- restoring ------------------------------------------------------------------------

  def initial_state(self, program, mesh, rules):
    """A fresh classifier whose `token_embed` and `encoder` are the --init's (restored straight
    onto the mesh), unless init.from_scratch."""
    choice = self._init_choice
    if choice is None:
      def scratch():
        log("encoder: fresh weights (init.from_scratch=true)")
        return program.init_fn()
      return scratch
    init = self.init_workdir()
    spec = init.task.state_spec(init.tokenizer().vocab_size, mesh, rules)  # outside the loop's mesh

    def pretrained():
      state = program.init_fn()
      params, described = init.restore_params(choice, mesh, rules, role="--init", spec=spec)
      log(f"encoder: {described}")
      return state.replace(params={**state.params, **{k: params[k] for k in ENCODER_PARAMS}})
    return pretrained

