"""Translation: packed sentence pairs, label-smoothed training, beam search and BLEU.

Builds a `Setup` for the shared training loop (train/loop.py); evaluation reports
`eval_loss` (token cross-entropy on packed eval rows) and `bleu` (sacreBLEU on
detokenized beam-search output, written to `WORKDIR/decodes/step_N.txt`).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.config import ParallelConfig, TranslateConfig, d_ff
from tl_jax.data import cache as token_cache
from tl_jax.data.loader import TrainLoader, eval_batches
from tl_jax.data.pairs import FIELDS, JointText, pack, padding_fraction, PackedPairs, prepare_packed, tokenize_pairs
from tl_jax.data.parallel_sources import make_parallel_source
from tl_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from tl_jax.models import decoding
from tl_jax.models.encoder import padded_vocab
from tl_jax.models.encoder_decoder import Translator
from tl_jax.parallel import sharding as shd
from tl_jax.parallel.mesh import make_mesh
from tl_jax.parallel.rules import rules_for
from tl_jax.train import loop
from tl_jax.train.best import BestParams
from tl_jax.train.loop import Setup, Timer, host_rows, log
from tl_jax.train.optimizer import optimizer, schedule
from tl_jax.train.state import init_state
from tl_jax.train.step import accumulate_and_update, cross_entropy, split_micro, step_rng


def train_step(state, batch: dict, *, model, tx, schedule, vocab_size: int, smoothing: float,
               grad_accum: int):
  dropout_rng = step_rng(state)

  def loss_sums(params, i, micro):
    logits = model.apply({"params": params}, micro, deterministic=False,
                         rngs={"dropout": jax.random.fold_in(dropout_rng, i)})
    weights = (micro["tgt_segments"] > 0).astype(jnp.float32)
    return jnp.sum(cross_entropy(logits, micro["tgt_out"], smoothing, vocab_size) * weights), jnp.sum(weights)

  return accumulate_and_update(state, split_micro(batch, grad_accum), loss_sums, tx=tx,
                               schedule=schedule, grad_accum=grad_accum)


def eval_step(params, batch: dict, *, model):
  """(sum of target-token cross-entropy, number of target tokens), no smoothing."""
  logits = model.apply({"params": params}, batch)
  weights = (batch["tgt_segments"] > 0).astype(jnp.float32)
  return jnp.sum(cross_entropy(logits, batch["tgt_out"]) * weights), jnp.sum(weights)


def translate_batch(params, src, *, model: Translator, vocab_size: int, beam_size: int,
                    length_penalty: float, max_len: int):
  """Best target ids [B, max_len] for source rows `src` [B, S] (right-padded with PAD_ID)."""
  segments = (src != PAD_ID).astype(jnp.int32)
  memory = model.apply({"params": params}, src, segments, method=Translator.encode)
  rows = src.shape[0] * beam_size
  if beam_size > 1:
    memory, segments = decoding.tile_beams((memory, segments), beam_size)
  # An empty cache of the right structure: run one step for its shapes, then zero it.
  _, fresh = model.apply({"params": params}, memory, segments, jnp.zeros((rows,), jnp.int32), 0,
                         max_len, method=Translator.decode_step, mutable=["cache"])
  cache = jax.tree.map(jnp.zeros_like, fresh["cache"])

  def step_fn(cache, tokens, position):
    logits, mutated = model.apply({"params": params, "cache": cache}, memory, segments, tokens,
                                  position, max_len, method=Translator.decode_step, mutable=["cache"])
    # Never emit the embedding table's padding rows or the special tokens other than </s>.
    ids = jnp.arange(logits.shape[-1])
    banned = (ids >= vocab_size) | ((ids < 5) & (ids != EOS_ID))
    return jnp.where(banned, -1e9, logits), mutated["cache"]

  if beam_size == 1:
    return decoding.greedy_decode(step_fn, cache, src.shape[0], max_len, BOS_ID, EOS_ID, PAD_ID)
  sequences, _ = decoding.beam_search(step_fn, cache, src.shape[0], beam_size, max_len, BOS_ID,
                                      EOS_ID, length_penalty, PAD_ID)
  return sequences[:, 0]


def source_rows(id_lists: list[list[int]], num_rows: int, seq_len: int) -> np.ndarray:
  """Decoder input: each source truncated to fit, closed by </s>, right-padded; unused rows all pad."""
  rows = np.full((num_rows, seq_len), PAD_ID, np.int32)
  for i, ids in enumerate(id_lists):
    ids = ids[: seq_len - 1] + [EOS_ID]
    rows[i, :len(ids)] = ids
  return rows


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


def build(config: TranslateConfig, workdir: str, devices=None) -> Setup:
  mesh = make_mesh(config, devices)
  rules = rules_for(config.parallel.rules)
  data = config.data
  source = make_parallel_source(data)
  source.check()
  cache_dir = token_cache.default_cache_dir(data.cache_dir)

  with Timer() as t:
    tokenizer = loop.workdir_tokenizer(JointText(source), data, workdir, cache_dir)
    train_rows, train_stats = prepare_packed(source, "train", tokenizer, data, cache_dir)
    eval_pairs, eval_refs, eval_stats = tokenize_pairs(source, "eval", tokenizer, data.max_eval_pairs,
                                                       data.seq_len, data.max_length_ratio)
  log(f"data: train {train_stats.describe()} into {train_rows.num_sequences:,} rows of "
      f"{data.seq_len} ({padding_fraction(train_rows.rows):.1%} target padding); eval "
      f"{eval_stats.describe()}; vocab {tokenizer.vocab_size} ({t.seconds:.1f}s)")

  loader = TrainLoader(train_rows, config.train.batch_size, config.train.seed,
                       jax.process_index(), jax.process_count())
  eval_loss_batches = eval_batches(PackedPairs(pack(eval_pairs, data.seq_len), data.seq_len),
                                   config.eval.batch_size, config.eval.num_batches)
  bleu_count = min(config.eval.bleu_pairs or len(eval_pairs), len(eval_pairs))
  bleu_src = [src for src, _ in eval_pairs[:bleu_count]]
  bleu_refs = eval_refs[:bleu_count]

  program = training_program(config, tokenizer.vocab_size, mesh, rules)
  model, state_shardings, batch_sharding = program.model, program.state_shardings, program.batch_sharding
  replicated = shd.replicated(mesh)
  loss_fn = jax.jit(functools.partial(eval_step, model=model),
                    in_shardings=(state_shardings.params, batch_sharding), out_shardings=replicated)
  decode_fn = jax.jit(functools.partial(
      translate_batch, model=model, vocab_size=tokenizer.vocab_size, beam_size=config.eval.beam_size,
      length_penalty=config.eval.length_penalty, max_len=data.seq_len),
      out_shardings=replicated)  # every process reads all decoded rows (device_get needs them local)
  decode_rows = config.eval.decode_batch_size

  best = BestParams(workdir, "bleu", higher_is_better=True)

  def compile_eval(state):
    compiled_loss = loss_fn.lower(
        state.params, loop.abstract_batch(host_rows(eval_loss_batches[0]), batch_sharding)).compile()
    compiled_decode = decode_fn.lower(state.params, source_rows([], decode_rows, data.seq_len)).compile() if bleu_src else None

    def evaluate(params, step):
      total, count = 0.0, 0.0
      for batch in eval_loss_batches:
        loss_sum, n = compiled_loss(params, shd.global_batch(host_rows(batch), batch_sharding))
        total, count = total + float(loss_sum), count + float(n)
      values = {"eval_loss": total / max(count, 1.0)}
      if compiled_decode is None:
        return values
      hypotheses = []
      for start in range(0, len(bleu_src), decode_rows):
        chunk = bleu_src[start:start + decode_rows]
        out = np.asarray(jax.device_get(compiled_decode(params, source_rows(chunk, decode_rows, data.seq_len))))
        hypotheses += [tokenizer.decode(row) for row in out[:len(chunk)]]
      values["bleu"], signature = bleu_score(hypotheses, bleu_refs)
      if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "decodes"), exist_ok=True)
        with open(os.path.join(workdir, "decodes", f"step_{step}.txt"), "w") as f:
          f.write("\n".join(hypotheses) + "\n")
        with open(os.path.join(workdir, "decodes", "bleu_signature.txt"), "w") as f:
          f.write(signature + "\n")
      best.offer(params, step, values["bleu"])
      return values
    return evaluate

  return Setup(
      config=config, mesh=mesh, rules=rules, loader=loader,
      state_shardings=state_shardings, abstract_state=program.abstract_state,
      init_fn=program.init_fn, train_fn=program.train_fn, batch_sharding=batch_sharding,
      tokens_per_step=config.train.batch_size * data.seq_len, flops_per_token=program.flops_per_token,
      compile_eval=compile_eval, eval_keys=("eval_loss", "bleu"))


def training_program(config: TranslateConfig, vocab_size: int, mesh, rules) -> loop.Program:
  """The Translator, its sharded state and the jitted train step on packed rows {field: [B, S]}:
  what `tl-jax translate` runs and `bench/speed.py` times."""
  seq_len = config.data.seq_len
  model = Translator(config.model, padded_vocab(vocab_size))
  tx = optimizer(config.train)
  example = {k: np.zeros((1, seq_len), np.int32) for k in FIELDS}
  init_fn = functools.partial(init_state, model, tx, config.train.seed, example)
  abstract, state_shardings, placed_init = loop.sharded_state(init_fn, mesh, rules)
  batch_sharding = {k: shd.batch_sharding(mesh, rules) for k in FIELDS}
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule(config.train),
                           vocab_size=vocab_size, smoothing=config.train.label_smoothing,
                           grad_accum=config.train.grad_accum)
  train_fn = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0)
  return loop.Program(model=model, abstract_state=abstract, state_shardings=state_shardings,
                      init_fn=placed_init, batch_sharding=batch_sharding, train_fn=train_fn,
                      flops_per_token=translation_flops_per_token(config.model, model.vocab_size,
                                                                  seq_len))


def run(config: TranslateConfig, workdir: str, devices=None, on_ready=None) -> int:
  return loop.run(build(config, workdir, devices), workdir, on_ready)


def translate_file(workdir: str, input_path: str, output_path: str, batch_size: int = 64) -> int:
  """Translates each line of `input_path` with the best-BLEU parameters (else the newest checkpoint)."""
  from tl_jax import config as config_lib
  from tl_jax.data.tokenizer import MODEL_FILE, Tokenizer
  from tl_jax.errors import UserError
  from tl_jax.train.checkpoint import Checkpointer, abstract_with_shardings

  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise UserError(f"{workdir} holds no config.json; point --workdir at a `tl-jax translate` run.")
  config = config_lib.load(config_path)
  if config.task != "translate":
    raise UserError(f"{workdir} is a `tl-jax {config.task}` run, not a translation run.")
  try:
    with open(input_path, encoding="utf-8") as f:
      lines = [line.strip() for line in f]
  except FileNotFoundError:
    raise UserError(f"input file {input_path} does not exist.") from None
  except UnicodeDecodeError as e:
    raise UserError(f"input file {input_path} is not valid UTF-8 (byte {e.start}); convert it "
                    "with iconv.") from None

  tokenizer = Tokenizer(os.path.join(workdir, "tokenizer", MODEL_FILE))
  # One device, whatever mesh trained the run: checkpoints restore onto any mesh.
  config.parallel = ParallelConfig(data=1)
  mesh = make_mesh(config, jax.devices()[:1])
  rules = rules_for(config.parallel.rules)
  model = Translator(config.model, padded_vocab(tokenizer.vocab_size))
  seq_len = config.data.seq_len
  example = {k: np.zeros((1, seq_len), np.int32) for k in FIELDS}
  init_fn = functools.partial(init_state, model, optimizer(config.train), config.train.seed, example)
  abstract, shardings, _ = loop.sharded_state(init_fn, mesh, rules)
  best = BestParams(workdir, "bleu", higher_is_better=True)
  if best.exists():
    params = best.restore(abstract_with_shardings(abstract.params, shardings.params))
    chosen = best.describe()
  else:
    ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), config.checkpoint.keep)
    with jax.set_mesh(mesh):
      restored = ckpt.restore(abstract_with_shardings(abstract, shardings))
    ckpt.close()
    if restored is None:
      raise UserError(f"{workdir} has no checkpoint yet; train it with `tl-jax translate` first.")
    params = restored[0].params
    chosen = f"the newest checkpoint (step {int(restored[0].step)})"
  decode = jax.jit(functools.partial(
      translate_batch, model=model, vocab_size=tokenizer.vocab_size,
      beam_size=config.eval.beam_size, length_penalty=config.eval.length_penalty, max_len=seq_len))

  outputs = []
  for start in range(0, len(lines), batch_size):
    chunk = lines[start:start + batch_size]
    rows = source_rows(tokenizer.encode(chunk), batch_size, seq_len)
    out = np.asarray(jax.device_get(decode(params, rows)))
    outputs += [tokenizer.decode(row) if text else "" for row, text in zip(out, chunk)]
  with open(output_path + ".tmp", "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in outputs))
  os.replace(output_path + ".tmp", output_path)
  log(f"translated {len(lines)} lines with {chosen} into {output_path}")
  return 0
