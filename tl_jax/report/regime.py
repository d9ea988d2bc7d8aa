"""The compute regime of a pretraining run: its own parameters, the tokens it saw, how often it
saw its data, and its training FLOPs, all from config.json and metrics.jsonl.

The paper's RQ1 claim (larger models reach a loss sooner) is about models far below the
compute-optimal size for their budget; a run that repeats its data many times is in the
data-bound regime of RQ4 instead. Chinchilla (Hoffmann et al. 2022) puts the compute-optimal
point near 20 training tokens per parameter: runs past it are flagged, as are runs that saw
their data more than once.
"""

from __future__ import annotations

import dataclasses

from tl_jax.report.runs import Run, data_tokens

OPTIMAL_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022


@dataclasses.dataclass(frozen=True)
class Regime:
  params: int  # every parameter of the masked LM, embeddings included
  non_embedding: int  # without the token, position and token-type embedding tables
  steps: int
  tokens_seen: int  # steps x batch rows x sequence length
  data_tokens: int | None  # the training data's size, where known
  flops: float  # training FLOPs: 6 x matrix weights x tokens + attention (train/flops.py)

  @property
  def passes(self) -> float | None:
    return self.tokens_seen / self.data_tokens if self.data_tokens else None

  @property
  def tokens_per_param(self) -> float:
    return self.tokens_seen / self.params

  @property
  def flags(self) -> tuple[str, ...]:
    out = []
    if self.passes is not None and self.passes > 1.0:
      out.append(f"data repeated ({self.passes:.1f} passes)")
    if self.tokens_per_param > OPTIMAL_TOKENS_PER_PARAM:
      out.append(f"past {OPTIMAL_TOKENS_PER_PARAM:g} tokens/parameter")
    return tuple(out)


def _model(config: dict):
  from tl_jax.config import ModelConfig
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  return ModelConfig(**{k: v for k, v in (config.get("model") or {}).items() if k in fields})


def mlm_params(config: dict) -> tuple[int, int]:
  """(all parameters, non-embedding parameters) of the masked LM a pretraining config builds,
  counted as models/encoder.py lays them out (tests/test_report.py checks it against the
  model)."""
  from tl_jax.config import d_ff
  from tl_jax.models.encoder import padded_vocab
  m, data = _model(config), config.get("data") or {}
  d, f, vocab = m.d_model, d_ff(m), padded_vocab(int(data.get("vocab_size") or 0))
  layer = 4 * (d * d + d) + 2 * d * f + f + d + 4 * d  # attention, MLP, two LayerNorms
  learned = m.positions == "learned"  # RoBERTa's: with a LayerNorm; Vaswani's sinusoids: none
  embeddings = vocab * d + (m.max_len * d if learned else 0) + m.type_vocab_size * d
  norms = (2 * d if learned else 0) + (2 * d if m.pre_ln else 0)  # after embedding; final
  rest = norms + (d * d + d) + 2 * d + vocab  # the LM head: dense, LayerNorm, output bias
  return m.num_layers * layer + embeddings + rest, m.num_layers * layer + rest


def eval_points(run: Run) -> list[tuple[int, float, float]]:
  """[(non-embedding parameters, tokens seen, eval loss)] at each eval after step 0 of a
  pretraining run whose config says its batch shape; [] otherwise."""
  r = of_run(run)
  if r is None:
    return []
  per_step = r.tokens_seen / r.steps
  return [(r.non_embedding, int(m["step"]) * per_step, float(m["eval_loss"]))
          for m in run.eval_lines("eval_loss") if int(m.get("step") or 0) > 0]


def of_run(run: Run) -> Regime | None:
  """The regime of a pretraining run with train lines; None for other runs."""
  if run.task != "pretrain":
    return None
  steps = max((int(m.get("step") or 0) for m in run.train_lines()), default=0)
  if not steps:
    return None
  from tl_jax.data.masking import max_predictions
  from tl_jax.models.encoder import padded_vocab
  from tl_jax.train.flops import mlm_flops_per_token
  data, train = run.config.get("data") or {}, run.config.get("train") or {}
  seq_len, rows = int(data.get("seq_len") or 0), int(train.get("batch_size") or 0)
  if not (seq_len and rows and data.get("vocab_size")):  # a config that does not say
    return None
  tokens = steps * rows * seq_len
  predictions = max_predictions(seq_len, float(data.get("mask_prob", 0.15)),
                                int(data.get("max_predictions", -1)))
  per_token = mlm_flops_per_token(_model(run.config), padded_vocab(int(data.get("vocab_size") or 0)),
                                  seq_len, predictions)
  params, non_embedding = mlm_params(run.config)
  return Regime(params=params, non_embedding=non_embedding, steps=steps, tokens_seen=tokens,
                data_tokens=data_tokens(run)[0], flops=tokens * per_token)
