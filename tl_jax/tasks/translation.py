"""Translation: packed sentence pairs, label-smoothed training, beam search and BLEU.

Scored by `eval_loss` (token cross-entropy on packed eval rows, no smoothing) and `bleu`
(sacreBLEU on detokenized greedy or beam-search output of the first `eval.bleu_pairs` eval
sentences, written to `WORKDIR/decodes/step_N.txt` while training); the highest BLEU picks
`best/`, which `tl-jax translate-file` translates with.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.config import d_ff
from tl_jax.data import cache as token_cache
from tl_jax.data.loader import TrainLoader, eval_batches
from tl_jax.data.pairs import (FIELDS, JointText, PackedPairs, pack, padding_fraction, prepare_packed,
                               tokenize_pairs)
from tl_jax.data.parallel_sources import make_parallel_source
from tl_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from tl_jax.errors import UserError
from tl_jax.models import decoding
from tl_jax.models.encoder_decoder import Translator
from tl_jax.parallel import sharding as shd
from tl_jax.tasks.base import Task, TaskData
from tl_jax.tasks.scoring import TRACES, Scoring
from tl_jax.tasks.workdir import DECODES, Workdir, trained_tokenizer
from tl_jax.train.loop import Timer, log
from tl_jax.train.step import accumulate_and_update, cross_entropy, split_micro, step_rng
from tl_jax.train.xent import chunked_cross_entropy


def train_step(state, batch: dict, *, model, tx, schedule, vocab_size: int, smoothing: float,
               grad_accum: int, loss_chunk: int = 0):
  """One optimizer step; `loss_chunk` > 0 makes the output layer's logits that many target
  tokens at a time inside the loss (tl_jax/train/xent.py), never all at once."""
  dropout_rng = step_rng(state)

  def loss_sums(params, i, micro):
    out = model.apply({"params": params}, micro, deterministic=False, project=not loss_chunk,
                      rngs={"dropout": jax.random.fold_in(dropout_rng, i)})
    if loss_chunk:
      losses = chunked_cross_entropy(*out, micro["tgt_out"], smoothing=smoothing,
                                     num_classes=vocab_size, chunk_tokens=loss_chunk)
    else:
      losses = cross_entropy(out, micro["tgt_out"], smoothing, vocab_size)
    weights = (micro["tgt_segments"] > 0).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(weights)

  return accumulate_and_update(state, split_micro(batch, grad_accum), loss_sums, tx=tx,
                               schedule=schedule, grad_accum=grad_accum)


def eval_sums(params, batch: dict, index, *, model):
  """({loss, count} of target-token cross-entropy, no smoothing; the target tokens'
  log-probabilities and weights)."""
  logits = model.apply({"params": params}, batch)
  weights = (batch["tgt_segments"] > 0).astype(jnp.float32)
  loss = jnp.sum(cross_entropy(logits, batch["tgt_out"]) * weights)
  return ({"loss": loss, "count": jnp.sum(weights)},
          jax.nn.log_softmax(logits.astype(jnp.float32)), weights)


def loss_metrics(sums: dict) -> dict:
  return {"eval_loss": sums["loss"] / max(sums["count"], 1.0)}


def reorders_cache(reorder_cache: bool | None = None) -> bool:
  """Whether a beam search moves its whole key/value cache into beam order every step (True) or
  reads it in place through the lineage table (decoding.py). None picks by backend: the table on
  GPU, where its search ran 1.90x (multi30k) and 1.51x (big) the reordering one (beam 4, L = 128,
  one H100, 2026-12-06); reordering on the CPU, where the table's gather made a multi30k beam-4
  step 0.86x (L = 32) and 0.93x (L = 128) as fast (2-core, jax 0.10.2, 2026-12-06), and on TPU,
  where neither has been measured and reordering is what it ran before."""
  return jax.default_backend() != "gpu" if reorder_cache is None else reorder_cache


def translate_batch(params, src, *, model: Translator, vocab_size: int, beam_size: int,
                    length_penalty: float, max_len: int, min_len: int = 0,
                    reorder_cache: bool | None = None):
  """Best target ids [B, max_len] for source rows `src` [B, S] (right-padded with PAD_ID).

  </s> is never emitted before position `min_len` (Hugging Face's min_length); min_len =
  max_len forces every output to its full length, as bench/decode.py times it. Beam search
  reorders its key/value cache every step or reads it through a lineage table, as
  `reorders_cache(reorder_cache)` says; the outputs are the same."""
  TRACES["decode"] += 1
  segments = (src != PAD_ID).astype(jnp.int32)
  memory = model.apply({"params": params}, src, segments, method=Translator.encode)
  rows = src.shape[0] * beam_size
  # An empty cache of the right structure: run one step for its shapes, then zero it. It holds
  # the first stage's positions; `grow` lengthens it (decoding.py's staged search). The same
  # step projects the source's keys and values once (`source_kv`), for all beams of a source.
  _, fresh = model.apply({"params": params}, memory, segments, jnp.zeros((rows,), jnp.int32), 0,
                         decoding.cache_stages(max_len)[0], beam_size, method=Translator.decode_step,
                         mutable=["cache", "source_kv"])
  cache = jax.tree.map(jnp.zeros_like, fresh["cache"])
  source_kv = fresh["source_kv"]

  def grow(cache, length: int):  # every leaf is a key or value cache [rows, positions, heads, dim]
    return jax.tree.map(lambda x: jnp.pad(x, [(0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)]),
                        cache)

  def step_fn(cache, tokens, position, lineage=None):
    cache_len = jax.tree.leaves(cache)[0].shape[1]
    logits, mutated = model.apply({"params": params, "cache": cache, "source_kv": source_kv},
                                  memory, segments, tokens, position, cache_len, beam_size, lineage,
                                  method=Translator.decode_step, mutable=["cache"])
    # Never emit the embedding table's padding rows or the special tokens other than </s>.
    ids = jnp.arange(logits.shape[-1])
    banned = (ids >= vocab_size) | ((ids < 5) & ((ids != EOS_ID) | (position < min_len)))
    return jnp.where(banned, -1e9, logits), mutated["cache"]

  if beam_size == 1:
    return decoding.greedy_decode(step_fn, cache, src.shape[0], max_len, BOS_ID, EOS_ID, PAD_ID,
                                  grow)
  sequences, _ = decoding.beam_search(step_fn, cache, src.shape[0], beam_size, max_len, BOS_ID,
                                      EOS_ID, length_penalty, PAD_ID, grow,
                                      lineage=not reorders_cache(reorder_cache))
  return sequences[:, 0]


def source_rows(id_lists: list[list[int]], num_rows: int, seq_len: int) -> np.ndarray:
  """Decoder input: each source truncated to fit, closed by </s>, right-padded; unused rows all pad."""
  rows = np.full((num_rows, seq_len), PAD_ID, np.int32)
  for i, ids in enumerate(id_lists):
    ids = ids[: seq_len - 1] + [EOS_ID]
    rows[i, :len(ids)] = ids
  return rows


# The narrowest source width a search compiles for; then twice that, ..., data.seq_len. Multi30k
# sources (18 tokens on average with </s> under a 2,000-piece vocabulary) then mostly take 16 or
# 32 positions, not 64 or 128: a BLEU eval 1.9-2.0x as fast on the CPU (docs/BENCHMARKS.md), for
# at most four compiled searches at seq_len 128.
FIRST_SOURCE_WIDTH = 16


def source_widths(seq_len: int) -> tuple[int, ...]:
  """The source widths a search compiles for: FIRST_SOURCE_WIDTH, twice that, ..., seq_len."""
  widths, width = [], FIRST_SOURCE_WIDTH
  while width < seq_len:
    widths.append(width)
    width *= 2
  return (*widths, seq_len)


def decode_batches(id_lists: list[list[int]], rows: int, seq_len: int
                   ) -> list[tuple[np.ndarray, int]]:
  """[(indices into id_lists, source width)]: the sources from shortest to longest (ties in
  order), `rows` at a time, each batch padded to the narrowest of `source_widths` that holds its
  longest source (with </s>, truncated to seq_len as `source_rows` does).

  There are as many batches as in input order (a search whose steps are short pays per batch),
  and a batch of short sentences tends to stop early together. The width changes only rounding
  (padding is masked), yet that can flip a near-tie (1 of 1,000 Multi30k sentences with beam 4 in
  float32, more in bfloat16), so a sentence's exact translation depends on the sentences batched
  with it: fixed for a fixed eval set or input file.
  """
  lengths = np.array([min(len(ids) + 1, seq_len) for ids in id_lists], np.int64)
  order = np.argsort(lengths, kind="stable")
  widths = np.asarray(source_widths(seq_len))
  batches = []
  for start in range(0, len(order), rows):
    chunk = order[start:start + rows]
    batches.append((chunk, int(widths[np.searchsorted(widths, lengths[chunk].max())])))
  return batches


def bleu_score(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
  """Corpus BLEU (sacreBLEU defaults, 13a tokenizer) and its signature."""
  import sacrebleu
  metric = sacrebleu.metrics.BLEU()
  return metric.corpus_score(hypotheses, [references]).score, str(metric.get_signature())


def translation_flops_per_token(model, vocab_size: int, seq_len: int) -> float:
  """Per target token, the convention of flops.py: 6 x dense weights + attention terms."""
  d, f = model.d_model, d_ff(model)
  enc = model.num_layers * (4 * d * d + 2 * d * f)
  dec = model.decoder_layers * (8 * d * d + 2 * d * f)
  attention = 12 * seq_len * d * (model.num_layers + 2 * model.decoder_layers)
  return 6.0 * (enc + dec + d * vocab_size) + attention


class Translate:
  """Decodes text with compiled searches, one per source width that `decode_batches` uses:
  `translate(params, ids_lists) -> [ids rows]`, in input order."""

  def __init__(self, model, vocab_size: int, eval_config, seq_len: int, rows: int, replicated=None):
    self.rows, self.seq_len = rows, seq_len
    self._jitted = jax.jit(functools.partial(
        translate_batch, model=model, vocab_size=vocab_size, beam_size=eval_config.beam_size,
        length_penalty=eval_config.length_penalty, max_len=seq_len),
        out_shardings=replicated)  # every process reads all decoded rows (device_get needs them local)
    self._compiled = {}  # source width -> the compiled search

  def compile(self, params, id_lists: list[list[int]]) -> None:
    """Compiles the searches that translating `id_lists` needs (none twice)."""
    self._compile_widths(params, decode_batches(id_lists, self.rows, self.seq_len))

  def _compile_widths(self, params, batches) -> None:
    for _, width in batches:
      if width not in self._compiled:
        self._compiled[width] = self._jitted.lower(params, source_rows([], self.rows, width)).compile()

  def __call__(self, params, id_lists: list[list[int]]) -> list[np.ndarray]:
    batches = decode_batches(id_lists, self.rows, self.seq_len)
    self._compile_widths(params, batches)
    out = [None] * len(id_lists)
    for indices, width in batches:
      chunk = [id_lists[i][: self.seq_len - 1] for i in indices]
      rows = np.asarray(jax.device_get(self._compiled[width](params, source_rows(chunk, self.rows, width))))
      for i, row in zip(indices, rows):
        out[i] = row
    return out


class BleuEval:
  """The `generate` step of translation's Scoring: BLEU of the decoded eval sentences."""

  def __init__(self, translate: Translate, tokenizer, sources: list[list[int]], references: list[str]):
    self.translate, self.tokenizer = translate, tokenizer
    self.sources, self.references = sources, references

  def compile(self, params) -> None:
    self.translate.compile(params, self.sources)

  def __call__(self, params, step: int, out_dir: str | None) -> dict:
    if not self.sources:
      return {}
    hypotheses = [self.tokenizer.decode(row) for row in self.translate(params, self.sources)]
    bleu, signature = bleu_score(hypotheses, self.references)
    if out_dir is not None and jax.process_index() == 0:
      os.makedirs(os.path.join(out_dir, DECODES), exist_ok=True)
      with open(os.path.join(out_dir, DECODES, f"step_{step}.txt"), "w") as f:
        f.write("\n".join(hypotheses) + "\n")
      with open(os.path.join(out_dir, DECODES, "bleu_signature.txt"), "w") as f:
        f.write(signature + "\n")
    return {"bleu": bleu}


class TranslationTask(Task):
  command = "translate"
  console_keys = ("eval_loss", "bleu")
  module = Translator

  def example_input(self):
    return {k: np.zeros((1, self.config.data.seq_len), np.int32) for k in FIELDS}

  def train_step(self, state, batch, *, model, tx, schedule, tokenizer):
    return train_step(state, batch, model=model, tx=tx, schedule=schedule,
                      vocab_size=tokenizer.vocab_size,
                      smoothing=self.config.train.label_smoothing,
                      grad_accum=self.config.train.grad_accum,
                      loss_chunk=self.config.train.loss_chunk)

  def batch_shardings(self, mesh, rules):
    return {k: shd.batch_sharding(mesh, rules) for k in FIELDS}

  def flops_per_token(self, model) -> float:
    return translation_flops_per_token(self.config.model, model.vocab_size, self.config.data.seq_len)

  @functools.cached_property
  def _checked_source(self):
    source = make_parallel_source(self.config.data)
    source.check()
    return source

  def _train_rows(self, tokenizer):
    data = self.config.data
    return prepare_packed(self._checked_source, "train", tokenizer, data,
                          token_cache.default_cache_dir(data.cache_dir))

  def _eval_pairs(self, tokenizer):
    data = self.config.data
    return tokenize_pairs(self._checked_source, "eval", tokenizer, data.max_eval_pairs, data.seq_len,
                          data.max_length_ratio)

  def loader(self, tokenizer) -> TrainLoader:
    return self.train_loader(self._train_rows(tokenizer)[0])

  def prepare(self, workdir: str, mesh, rules) -> TaskData:
    data = self.config.data
    source = self._checked_source
    with Timer() as t:
      tokenizer = trained_tokenizer(workdir, JointText(source), data,
                                    token_cache.default_cache_dir(data.cache_dir))
      train_rows, train_stats = self._train_rows(tokenizer)
      _, _, eval_stats = self._eval_pairs(tokenizer)
    log(f"data: train {train_stats.describe()} into {train_rows.num_sequences:,} rows of "
        f"{data.seq_len} ({padding_fraction(train_rows.rows):.1%} target padding); eval "
        f"{eval_stats.describe()}; vocab {tokenizer.vocab_size} ({t.seconds:.1f}s)")
    return self.task_data(tokenizer, train_rows, mesh, rules)

  def scoring(self, tokenizer, model, mesh, rules, *, compression: bool = False,
              max_examples: int = 0, batch_size: int = 0) -> Scoring:
    """Eval loss on `eval.num_batches` packed batches of the eval pairs, and BLEU of the first
    `eval.bleu_pairs` of them, decoded as `eval` says; the run's own eval batches (`batch_size`
    is not used). `max_examples` keeps the BLEU pairs to that many, and the loss batches to
    those that hold the first that many pairs (packing keeps the pairs' order)."""
    cfg, data = self.config, self.config.data
    pairs, references, _ = self._eval_pairs(tokenizer)
    packed = pack(pairs, data.seq_len)
    num_batches = cfg.eval.num_batches
    if max_examples:  # a row's segments are its pairs, numbered from 1
      rows = int(np.searchsorted(np.cumsum(packed["tgt_segments"].max(axis=1)), max_examples)) + 1
      num_batches = min(num_batches, -(-rows // cfg.eval.batch_size))
    loss_batches = eval_batches(PackedPairs(packed, data.seq_len), cfg.eval.batch_size, num_batches)
    count = min(cfg.eval.bleu_pairs or len(pairs), len(pairs))
    if max_examples:
      count = min(count, max_examples)
    translate = Translate(model, tokenizer.vocab_size, cfg.eval, data.seq_len,
                          cfg.eval.decode_batch_size, shd.replicated(mesh))
    bleu = BleuEval(translate, tokenizer, [src for src, _ in pairs[:count]], references[:count])
    return Scoring({"eval": loss_batches}, functools.partial(eval_sums, model=model), loss_metrics,
                   self.batch_shardings(mesh, rules), examples=count, generate=bleu)

  def forward(self, model, params, batch, tokenizer):
    return model.apply({"params": params}, batch)


def translate_file(workdir: str, input_path: str, output_path: str, batch_size: int = 64) -> int:
  """Translates each line of `input_path` with the best-BLEU parameters (else the newest checkpoint)."""
  run = Workdir.open(workdir, commands=("translate",))
  try:
    with open(input_path, encoding="utf-8") as f:
      lines = [line.strip() for line in f]
  except FileNotFoundError:
    raise UserError(f"input file {input_path} does not exist.") from None
  except UnicodeDecodeError as e:
    raise UserError(f"input file {input_path} is not valid UTF-8 (byte {e.start}); convert it "
                    "with iconv.") from None

  config = run.config
  tokenizer = run.tokenizer()
  mesh, rules = run.one_device()
  which = "best" if run.best().exists() else "latest"
  if which == "latest" and run.latest_step() is None:
    raise UserError(f"{workdir} has no checkpoint yet; train it with `tl-jax translate` first.")
  params, chosen = run.restore_params(which, mesh, rules)
  translate = Translate(run.task.model(tokenizer.vocab_size), tokenizer.vocab_size, config.eval,
                        config.data.seq_len, batch_size)
  decoded = translate(params, tokenizer.encode(lines))
  outputs = [tokenizer.decode(row) if text else "" for row, text in zip(decoded, lines)]
  with open(output_path + ".tmp", "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in outputs))
  os.replace(output_path + ".tmp", output_path)
  log(f"translated {len(lines)} lines with {chosen} into {output_path}")
  return 0

