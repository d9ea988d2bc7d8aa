"""The encoder: tied MLM head, scan/remat equal to the plain layer loop, padding."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.config import ModelConfig
from tl_jax.models.encoder import MaskedLM, padded_vocab

VOCAB = 100  # differs from every other axis size, so shape checks are unambiguous


def small(**kw):
  base = dict(num_layers=3, d_model=32, num_heads=2, max_len=16, dropout=0.0, dtype="float32")
  base.update(kw)
  return ModelConfig(**base)


def init(config, seed=0):
  model = MaskedLM(config, VOCAB)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 5, VOCAB)
  params = nn.meta.unbox(model.init(jax.random.key(seed), tokens)["params"])
  return model, params, tokens


def stack_layers(params, n):
  """Unrolled layer_i params -> the scanned layout (a leading layer axis)."""
  enc = dict(params["encoder"])
  layers = [enc.pop(f"layer_{i}") for i in range(n)]
  enc["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return {**params, "encoder": enc}


def test_mlm_head_is_tied_to_token_embeddings():
  model, params, tokens = init(small())
  assert "token_embed" in params and params["token_embed"]["embedding"].shape == (VOCAB, 32)
  kernels = [p.shape for p in jax.tree.leaves(params) if p.shape and p.shape[-1] == VOCAB and p.ndim == 2]
  assert kernels == [], "no separate vocab projection: the decoder reuses the embeddings"
  logits = model.apply({"params": params}, tokens)
  assert logits.shape == (2, 16, VOCAB)


@pytest.mark.parametrize("pre_ln,remat", [(False, "none"), (True, "none"), (False, "full"),
                                          (True, "dots")])
def test_scan_and_remat_match_the_layer_loop(pre_ln, remat):
  model, params, tokens = init(small(pre_ln=pre_ln))
  scanned = MaskedLM(small(pre_ln=pre_ln, scan_layers=True, remat=remat), VOCAB)
  scanned_params = stack_layers(params, 3)

  def loss(m, p):
    return jnp.mean(m.apply({"params": p}, tokens) ** 2)

  np.testing.assert_allclose(loss(scanned, scanned_params), loss(model, params), rtol=1e-5)
  g_loop = stack_layers(jax.grad(lambda p: loss(model, p))(params), 3)
  g_scan = jax.grad(lambda p: loss(scanned, p))(scanned_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_scan, g_loop)


def test_pre_and_post_ln_differ_and_both_are_finite():
  post = init(small())
  pre = init(small(pre_ln=True))
  out_post = post[0].apply({"params": post[1]}, post[2])
  out_pre = pre[0].apply({"params": pre[1]}, pre[2])
  assert "ln_final" in pre[1]["encoder"] and "ln_final" not in post[1]["encoder"]
  assert np.isfinite(out_post).all() and np.isfinite(out_pre).all()


def test_lengths_hide_padding_from_real_tokens():
  model, params, tokens = init(small())
  lengths = jnp.array([10, 16])
  padded = tokens.at[0, 10:].set(0)
  other_padding = tokens.at[0, 10:].set(7)
  a = model.apply({"params": params}, padded, lengths=lengths)
  b = model.apply({"params": params}, other_padding, lengths=lengths)
  np.testing.assert_allclose(a[0, :10], b[0, :10], rtol=1e-5, atol=1e-5)
  assert not np.allclose(model.apply({"params": params}, padded)[0, :10], a[0, :10])


def test_dropout_needs_rng_only_in_training():
  model, params, tokens = init(small(dropout=0.5))
  eval_a = model.apply({"params": params}, tokens)
  eval_b = model.apply({"params": params}, tokens)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = model.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert not np.allclose(train, eval_a)


def test_padded_vocab():
  assert padded_vocab(2000) == 2048 and padded_vocab(128) == 128 and padded_vocab(129) == 256


def test_gradient_accumulation_equals_the_whole_batch():
  import optax
  from tl_jax.config import DataConfig, TrainConfig
  from tl_jax.train.optimizer import optimizer, schedule
  from tl_jax.train.state import init_state
  from tl_jax.tasks.masked_lm import train_step

  model = MaskedLM(small(), VOCAB)
  train = TrainConfig(max_steps=10, warmup_steps=0)
  tx = optimizer(train)
  tokens = jax.random.randint(jax.random.key(3), (8, 16), 5, VOCAB)
  state = nn.meta.unbox(init_state(model, tx, 0, tokens[:1]))
  step = lambda k: jax.jit(lambda s, t: train_step(s, t, model=model, tx=tx, schedule=schedule(train),
                                                   data=DataConfig(), vocab_size=VOCAB,
                                                   grad_accum=k))(state, tokens)
  (whole, m1), (split, m4) = step(1), step(4)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), split.params, whole.params)
  assert m1["tokens"] > 0 and optax.tree.norm(jax.tree.map(jnp.subtract, whole.params, state.params)) > 0


def test_seconds_horizon_rates_before_and_after_the_end_is_fixed():
  from tl_jax.config import FinetuneTrainConfig, TrainConfig
  from tl_jax.train.optimizer import horizon_learning_rate
  lr = lambda train, step, end: float(horizon_learning_rate(train, step, end))
  t = TrainConfig(learning_rate=1.0, warmup_steps=10, schedule_horizon="seconds")
  assert lr(t, 5, 0) == 0.5 and lr(t, 10, 0) == 1.0 and lr(t, 5000, 0) == 1.0  # end not fixed: peak
  assert lr(t, 55, 100) == pytest.approx(0.5) and lr(t, 100, 100) == 0.0 == lr(t, 120, 100)
  # Finetuning's warmup is a fraction of the run: of max_steps until the end is fixed, then of it.
  f = FinetuneTrainConfig(learning_rate=1.0, warmup_fraction=0.1, warmup_steps=60,
                          schedule_horizon="seconds")
  assert lr(f, 30, 0) == 0.5 and lr(f, 10, 200) == 0.5 and lr(f, 20, 200) == 1.0
  assert lr(f, 110, 200) == pytest.approx(0.5)


def test_a_moved_seconds_horizon_bends_the_decay_without_a_jump():
  from tl_jax.config import TrainConfig
  from tl_jax.train import optimizer as opt
  t = TrainConfig(learning_rate=2.0, warmup_steps=10, schedule_horizon="seconds", grad_clip=0.0)
  tx = opt.optimizer(t)
  params = {"w": jnp.ones((2, 2))}
  state = opt.with_horizon(tx.init(params), t, 100)
  rates = []
  for count in range(60):
    if count == 40:  # the end moves from 100 to 200 after 40 updates
      state = opt.refit_horizon(state, t, 200)
    _, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
    rates.append(float(opt.applied_learning_rate(state, None)))
  at_40 = 2.0 * (100 - 40) / (100 - 10)  # the rate the old schedule gives count 40
  assert rates[39] == pytest.approx(2.0 * (100 - 39) / 90)
  assert rates[40] == pytest.approx(at_40)  # no jump: the new line starts where the old one was
  assert rates[59] == pytest.approx(at_40 * (200 - 59) / (200 - 40))
  assert opt.horizon_end(state) == 200
  # Moved again, the line starts from the rate it has reached.
  state = opt.refit_horizon(state, t, 100)
  _, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  assert float(opt.applied_learning_rate(state, None)) == pytest.approx(at_40 * (200 - 60) / 160)


def _horizon_rates(t, fix_at: int, end: int, count: int, refit: tuple[int, int] | None = None):
  """The rates of `count` updates under a seconds horizon whose end is fixed at `end` after
  `fix_at` updates (and moved to refit[1] after refit[0], if given), as the loop does it."""
  from tl_jax.train import optimizer as opt
  tx = opt.optimizer(t)
  params = {"w": jnp.ones((2, 2))}
  state, rates = tx.init(params), []
  for c in range(count):
    if c == fix_at:
      state = opt.with_horizon(state, t, end)
    if refit and c == refit[0]:
      state = opt.refit_horizon(state, t, refit[1])
    _, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
    rates.append(float(opt.applied_learning_rate(state, None)))
  return rates


def test_a_warmup_fraction_is_a_share_of_the_steps_the_decay_ends_at():
  from tl_jax.config import TrainConfig
  from tl_jax.train import optimizer as opt
  # Steps: 10% of max_steps (200), whatever warmup_steps says.
  lr = opt.schedule(TrainConfig(learning_rate=1.0, warmup_steps=7, warmup_fraction=0.1, max_steps=200))
  assert [float(lr(s)) for s in (10, 20, 110, 200)] == pytest.approx([0.5, 1.0, 0.5, 0.0])
  # Seconds: warmup_steps' pace (100) until the end is fixed at step 200 after 5 updates; from
  # there a straight line from the rate reached (0.05) to the peak at 10% of 200, then the decay.
  t = TrainConfig(learning_rate=1.0, warmup_steps=100, warmup_fraction=0.1,
                  schedule_horizon="seconds", max_train_seconds=10.0, grad_clip=0.0)
  rates = _horizon_rates(t, 5, 200, 201)
  assert rates[:5] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
  assert rates[5] == pytest.approx(0.05) and rates[20] == pytest.approx(1.0)  # no jump; peak at 20
  assert rates[12] == pytest.approx(0.05 + 0.95 * 7 / 15)
  assert rates[110] == pytest.approx(0.5) and rates[200] == 0.0
  # A slow model (end 100) and a fast one (end 1000) warm up over the same share of their steps.
  fast = _horizon_rates(t, 5, 1000, 101)
  assert fast[100] == pytest.approx(1.0) and fast[50] < 1.0
  # An end fixed after the fraction's warmup (30 updates, 10% of 200 = 20): the rate leaves the
  # slow ramp for the decay at once, rather than decaying from 0.3 and never reaching the peak.
  late = _horizon_rates(t, 30, 200, 40)
  assert late[29] == pytest.approx(0.29) and late[30] == pytest.approx((200 - 30) / 180)


def test_an_end_moved_during_the_warmup_finishes_the_warmup():
  """The end moves at update 5 of a 10-step warmup: the rate still climbs to the peak at step 10
  and only then decays, to 0 at the new end (before, it fell from 0.5 straight to 0)."""
  from tl_jax.config import TrainConfig
  t = TrainConfig(learning_rate=1.0, warmup_steps=10, schedule_horizon="seconds",
                  max_train_seconds=10.0, grad_clip=0.0)
  rates = _horizon_rates(t, 2, 100, 200, refit=(5, 200))
  assert rates[4:11] == pytest.approx([0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
  assert rates[105] == pytest.approx((200 - 105) / 190) and rates[199] > 0.0


def test_the_horizon_moves_only_past_its_tolerance():
  from tl_jax.train.horizon import moved_horizon
  budget = 100.0  # the end was set at step 100, 10 s; the schedule ends at step 1000
  assert moved_horizon(budget, 150, 14.0, 1000, (100, 10.0), 10**6) is None  # < 5% measured
  # 80 ms a step since then: step 1000 comes at 82 s, 18 s early: the end moves to 100 s.
  assert moved_horizon(budget, 200, 18.0, 1000, (100, 10.0), 10**6) == 200 + 1025
  # 100 ms a step: step 1000 comes at 100 s; 101 ms: at 100.9 s, within 2%.
  assert moved_horizon(budget, 200, 20.0, 1000, (100, 10.0), 10**6) is None
  assert moved_horizon(budget, 200, 20.1, 1000, (100, 10.0), 10**6) is None
  assert moved_horizon(budget, 200, 18.0, 1000, (100, 10.0), 1100) == 1100  # max_steps


def test_a_session_fixes_the_end_from_its_own_pace_then_moves_it():
  """SecondsHorizon as the loop drives it, sync by sync: the first sync (after the slow first
  step) only starts the pace; the end is fixed at the first sync past 5% of the run from the pace
  since then, and moves once a later pace would miss the budget by more than 2%."""
  from tl_jax.config import TrainConfig
  from tl_jax.train import optimizer as opt
  from tl_jax.train.horizon import SecondsHorizon
  t = TrainConfig(learning_rate=1.0, warmup_steps=10, schedule_horizon="seconds",
                  max_train_seconds=100.0, max_steps=10**6, grad_clip=0.0)
  state = opt.optimizer(t).init({"w": jnp.ones((2, 2))})
  h = SecondsHorizon(t, state)
  assert h.end == 0 and not h.due(10**5)
  state, note = h.at_sync(state, 1, 3.0, 3.0)  # a slow first step: not a pace to fix from
  assert note is None and h.end == 0 and h.fix_at == pytest.approx(3.0 + 0.05 * 100.0)
  state, note = h.at_sync(state, 21, 5.0, 0.1)  # 100 ms a step since, but only 2 s of it
  assert note is None and h.end == 0
  state, note = h.at_sync(state, 61, 9.0, 0.1)  # 6 s at 100 ms a step: 91 s left, 910 steps
  assert h.end == 61 + 910 == opt.horizon_end(state) and "ends at step 971" in note
  assert h.fix_at is None and h.due(971) and not h.due(970)
  state, note = h.at_sync(state, 161, 19.0, 0.1)  # on pace: stays
  assert note is None and h.end == 971
  state, note = h.at_sync(state, 261, 34.0, 0.15)  # 125 ms a step since step 61: moves
  assert h.end == 261 + math.ceil(66.0 / 0.125) == opt.horizon_end(state)
  assert "moves from step 971" in note
  steps = SecondsHorizon(TrainConfig(), opt.optimizer(TrainConfig()).init({"w": jnp.ones(2)}))
  assert steps.end is None and steps.at_sync(None, 5, 1.0, 0.2) == (None, None)
