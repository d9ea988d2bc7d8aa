"""model.fp8: the train step's Dense matmuls on float8 operands, evaluation in model.dtype."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tl_jax import config as config_lib
from tl_jax import tasks
from tl_jax.errors import UserError
from tl_jax.models.layers import FP8_HISTORY, fp8_contract, fp8_contract_delayed, fp8_quantize
from tl_jax.train import metrics


def rounded(x, fp8):
  """x rounded as fp8_quantize should: scaled so that amax lands on the format's largest
  value, rounded to the nearest fp8 number, scaled back (numpy and ml_dtypes, not jax)."""
  x = np.asarray(x, np.float32)
  scale = np.float32(np.abs(x).max() / float(ml_dtypes.finfo(fp8).max))
  return (x / scale).astype(fp8).astype(np.float32) * scale


# (x shape, kernel shape, contracted axes): a plain Dense layer, the attention's query
# projection (two output axes) and its output projection (two contracted axes).
SHAPES = [((2, 8, 64), (64, 48), 1), ((2, 8, 64), (64, 4, 12), 1), ((2, 8, 4, 16), (4, 16, 48), 2)]


def operands(x_shape, w_shape, n_in, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k1, x_shape, jnp.float32)
  w = 0.05 * jax.random.normal(k2, w_shape, jnp.float32)
  g = jax.random.normal(k3, x_shape[:len(x_shape) - n_in] + w_shape[n_in:], jnp.float32)
  return x, w, g


def relative(a, b):
  return float(np.linalg.norm(np.ravel(a - b)) / np.linalg.norm(np.ravel(b)))


@pytest.mark.parametrize("x_shape,w_shape,n_in", SHAPES)
def test_forward_is_the_product_of_the_e4m3_rounded_operands(x_shape, w_shape, n_in):
  x, w, _ = operands(x_shape, w_shape, n_in)
  y = np.asarray(jax.jit(lambda a, b: fp8_contract(a, b, n_in))(x, w))
  e4m3 = ml_dtypes.float8_e4m3fn
  np.testing.assert_allclose(y, np.tensordot(rounded(x, e4m3), rounded(w, e4m3), n_in),
                             rtol=1e-5, atol=1e-5)
  # e4m3 keeps 3 mantissa bits: a few percent off the exact product, and visibly so.
  assert 0.005 < relative(y, np.tensordot(x, w, n_in)) < 0.08


@pytest.mark.parametrize("x_shape,w_shape,n_in", SHAPES)
def test_gradients_are_products_with_the_e5m2_rounded_gradient(x_shape, w_shape, n_in):
  x, w, g = operands(x_shape, w_shape, n_in, seed=1)
  _, vjp = jax.vjp(lambda a, b: fp8_contract(a, b, n_in), x, w)
  dx, dw = map(np.asarray, jax.jit(vjp)(g))
  assert dx.shape == x.shape and dw.shape == w.shape
  e4m3, e5m2 = ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2
  out, free = w.ndim - n_in, x.ndim - n_in

  def grads(x, w, g):  # the exact gradients of tensordot(x, w, n_in)
    dx = np.tensordot(g, w, (list(range(g.ndim - out, g.ndim)), list(range(n_in, w.ndim))))
    return dx, np.tensordot(x, g, (list(range(free)), list(range(free))))

  for got, want in zip((dx, dw), grads(rounded(x, e4m3), rounded(w, e4m3), rounded(g, e5m2))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # e5m2 keeps 2 mantissa bits: within ~15% of the exact gradients.
  for got, want in zip((dx, dw), grads(x, w, g)):
    assert relative(got, want) < 0.15


def test_quantize_keeps_zeros_and_huge_values_finite():
  q, scale = fp8_quantize(jnp.zeros((4,)), jnp.float8_e4m3fn)
  assert float(scale) == 1.0 and not np.asarray(q, np.float32).any()
  q, scale = fp8_quantize(jnp.array([3e38, -1.0, 0.0]), jnp.float8_e4m3fn)
  values = np.asarray(q, np.float32)
  assert np.isfinite(values).all() and values[0] == 448.0  # e4m3fn's largest value
  q, _ = fp8_quantize(jnp.array([1e-3, -7.0]), jnp.float8_e5m2)
  assert np.asarray(q, np.float32)[1] == -57344.0  # e5m2's largest value


def test_operands_of_two_dtypes_are_refused():
  x, w, _ = operands(*SHAPES[0])
  with pytest.raises(TypeError, match="one dtype"):
    fp8_contract(x.astype(jnp.bfloat16), w, 1)


def tiny(fp8: bool, steps: int):
  c = config_lib.load_preset("configs/mlm.py:tiny")
  c.model.fp8 = fp8
  c.train.max_steps, c.eval.every_steps, c.checkpoint.every_steps = steps, steps // 3, 100_000
  c.parallel.data = 1
  return c


def test_only_the_train_step_computes_in_fp8():
  from tl_jax.parallel.mesh import make_mesh
  from tl_jax.parallel.rules import rules_for
  from tl_jax.tasks.base import Vocabulary
  c = tiny(True, 30)
  task = tasks.task_for(c)
  mesh, rules = make_mesh(c, jax.devices()[:1]), rules_for("default")
  program = task.program(Vocabulary(c.data.vocab_size), mesh, rules)
  state = program.abstract_state
  tokens = jax.ShapeDtypeStruct((c.train.batch_size, c.data.seq_len), jnp.int32)
  step = program.train_fn.lower(state, tokens).as_text()
  assert "f8E4M3FN" in step and "f8E5M2" in step
  assert program.model.config.fp8 is False and task.model(c.data.vocab_size).config.fp8 is False
  forward = jax.jit(program.model.apply).lower({"params": state.params}, tokens).as_text()
  assert "f8E4M3FN" not in forward


@pytest.mark.slow
def test_fp8_training_learns_like_the_default(tmp_path):
  """150 steps of the tiny preset (float32 compute) with and without fp8 matmuls: both learn,
  and fp8 ends close to the default (the rounding is noise, not a different model)."""
  finals = {}
  for fp8 in (False, True):
    workdir = str(tmp_path / f"fp8-{fp8}")
    assert tasks.run(tiny(fp8, 150), workdir, jax.devices()[:1]) == 0
    losses = [l["eval_loss"] for l in metrics.read(workdir) if "eval_loss" in l]
    assert losses[-1] < losses[0] - 2.0, (fp8, losses)
    finals[fp8] = losses[-1]
  assert abs(finals[True] - finals[False]) < 0.15, finals


def test_a_sharded_fp8_step_agrees_with_one_device(tmp_path):
  """Under data x fsdp x tensor (2 x 2 x 2) each tensor's scale is its global amax: the losses
  match one device's up to the float rounding that moves a few fp8 roundings."""
  curves = {}
  for name, mesh in (("single", (1, 1, 1)), ("sharded", (2, 2, 2))):
    c = tiny(True, 24)
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = mesh
    c.data.max_train_tokens, c.train.log_every = 200_000, 8
    workdir = str(tmp_path / name)
    assert tasks.run(c, workdir, jax.devices("cpu")[:int(np.prod(mesh))]) == 0
    curves[name] = [l["loss"] for l in metrics.read(workdir) if "loss" in l]
  assert len(curves["single"]) == 3 and curves["single"][-1] < curves["single"][0]
  np.testing.assert_allclose(curves["sharded"], curves["single"], rtol=5e-4)


# ---------------------------------------------------------------------------
# Delayed scaling (model.fp8_history): scales from earlier steps' amaxes, kept in the train state.


def delayed(x, w, history, n_in, g):
  y, vjp = jax.vjp(lambda a, b, h: fp8_contract_delayed(a, b, h, n_in), x, w, history)
  return (y, *vjp(g))


@pytest.mark.parametrize("x_shape,w_shape,n_in", SHAPES)
def test_delayed_scaling_with_this_steps_amaxes_is_current_scaling(x_shape, w_shape, n_in):
  x, w, g = operands(x_shape, w_shape, n_in, seed=2)
  amaxes = jnp.stack([jnp.max(jnp.abs(t)) for t in (x, w, g)])
  # The newest column holds this step's amaxes; older, smaller ones do not lower the scale.
  history = jnp.stack([amaxes, 0.5 * amaxes, jnp.zeros(3)], axis=1)
  y, dx, dw, newest = jax.jit(delayed, static_argnums=3)(x, w, history, n_in, g)
  _, vjp = jax.vjp(lambda a, b: fp8_contract(a, b, n_in), x, w)
  # The same roundings and products; the float32 rescaling may differ in the last bit.
  np.testing.assert_allclose(y, fp8_contract(x, w, n_in), rtol=1e-6, atol=1e-6)
  for got, want in zip((dx, dw), vjp(g)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # What comes back for the history is this step's amaxes, in column 0 only.
  np.testing.assert_array_equal(newest[:, 0], amaxes)
  assert not np.asarray(newest[:, 1:]).any()


def test_delayed_scales_come_from_the_history_and_saturate():
  x, w, g = operands(*SHAPES[0], seed=3)
  e4m3 = ml_dtypes.float8_e4m3fn
  # The history says x is 4 times smaller than it is: x is cast with that scale, its largest
  # values clip to e4m3's largest (448 x the scale), and nothing is NaN.
  x_amax, w_amax = float(jnp.max(jnp.abs(x))), float(jnp.max(jnp.abs(w)))
  history = jnp.array([[x_amax / 4], [w_amax], [1.0]], jnp.float32)
  y, dx, dw, _ = delayed(x, w, history, 1, g)
  x_scale, w_scale = x_amax / 4 / 448.0, w_amax / 448.0
  xq = np.clip(np.asarray(x) / x_scale, -448, 448).astype(e4m3).astype(np.float32) * x_scale
  assert np.abs(xq).max() == pytest.approx(x_amax / 4, rel=1e-6)
  np.testing.assert_allclose(y, np.tensordot(xq, rounded(w, e4m3), 1), rtol=1e-5, atol=1e-5)
  assert all(np.isfinite(np.asarray(t)).all() for t in (y, dx, dw))
  # Nothing recorded yet: scale 1, as the first step of a run has it.
  y0, *_ = delayed(x, w, jnp.zeros((3, 4)), 1, g)
  ones = np.asarray(x).astype(e4m3).astype(np.float32)
  np.testing.assert_allclose(y0, np.tensordot(ones, np.asarray(w).astype(e4m3).astype(np.float32), 1),
                             rtol=1e-5, atol=1e-5)


def delayed_program(grad_accum: int = 1, history: int = 4):
  from tl_jax.parallel.mesh import make_mesh
  from tl_jax.parallel.rules import rules_for
  from tl_jax.tasks.base import Vocabulary
  c = tiny(True, 30)
  c.model.fp8_history, c.model.dropout, c.train.grad_accum = history, 0.0, grad_accum
  config_lib.validate(c)
  mesh, rules = make_mesh(c, jax.devices()[:1]), rules_for("default")
  program = tasks.task_for(c).program(Vocabulary(c.data.vocab_size), mesh, rules)
  tokens = jax.random.randint(jax.random.key(0), (c.train.batch_size, c.data.seq_len), 4,
                              c.data.vocab_size)
  return program, mesh, rules, tokens


@pytest.fixture(scope="module")
def delayed4():
  """The tiny masked LM with a 4-step history, one micro-batch: compiled once for the tests below."""
  return delayed_program()


def run_steps(program, mesh, rules, tokens, n, state=None):
  import flax.linen as nn
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = program.init_fn() if state is None else state
    losses = []
    for _ in range(n):
      state, m = program.train_fn(state, tokens)
      losses.append(float(m["loss"]))
  return state, losses


def test_the_step_rolls_each_steps_amaxes_into_the_state_and_not_into_the_parameters(delayed4):
  program, mesh, rules, tokens = delayed4
  names = {"/".join(str(getattr(k, "key", k)) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(program.abstract_state.params)[0]}
  assert not any(FP8_HISTORY in n for n in names)  # the optimizer and exports never see them
  current, *_ = delayed_program(history=0)
  with jax.set_mesh(mesh):  # the histories do not move any parameter's initial values
    for a, b in zip(jax.tree.leaves(current.init_fn().params), jax.tree.leaves(program.init_fn().params)):
      np.testing.assert_array_equal(a, b)
  state, losses = run_steps(program, mesh, rules, tokens, 5)
  assert losses[-1] < losses[0]
  histories = [np.asarray(h) for h in jax.tree.leaves(state.fp8_history)]  # the step donates state
  assert len(histories) == len(jax.tree.leaves(program.abstract_state.fp8_history)) > 0
  for h in histories:  # 5 steps into a history of 4: full, every amax positive
    assert h.shape == (3, 4) and (h > 0).all()
  # Rolled, newest first: a fresh step's newest column becomes the next state's second.
  next_state, _ = run_steps(program, mesh, rules, tokens, 1, state)
  for before, after in zip(histories, jax.tree.leaves(next_state.fp8_history)):
    np.testing.assert_array_equal(np.asarray(after)[:, 1:], before[:, :-1])


def test_micro_batches_record_the_largest_amax_of_the_whole_batch(delayed4):
  """With dropout off, one step over two micro-batches sees the same tensors as one over the
  whole batch, so the amax each layer records must match: the maximum, not the sum."""
  recorded = {}
  for accum in (1, 2):
    program, mesh, rules, tokens = delayed4 if accum == 1 else delayed_program(grad_accum=accum)
    state, _ = run_steps(program, mesh, rules, tokens, 1)
    recorded[accum] = [np.asarray(h)[:, 0] for h in jax.tree.leaves(state.fp8_history)]
  for one, two in zip(recorded[1], recorded[2]):
    np.testing.assert_allclose(two, one, rtol=1e-2)


def test_a_checkpoint_keeps_the_histories_and_the_restored_step_is_exact(tmp_path, delayed4):
  from tl_jax.train.checkpoint import Checkpointer, abstract_with_shardings
  program, mesh, rules, tokens = delayed4
  state, _ = run_steps(program, mesh, rules, tokens, 3)
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=1, async_save=False)
  ckpt.save(3, state, {})
  ckpt.wait()
  restored, _ = ckpt.restore(abstract_with_shardings(program.abstract_state, program.state_shardings))
  ckpt.close()
  for a, b in zip(jax.tree.leaves(state.fp8_history), jax.tree.leaves(restored.fp8_history)):
    np.testing.assert_array_equal(a, b)
  _, straight = run_steps(program, mesh, rules, tokens, 1, state)
  _, resumed = run_steps(program, mesh, rules, tokens, 1, restored)
  assert straight == resumed


def test_fp8_history_needs_fp8():
  c = tiny(False, 30)
  c.model.fp8_history = 16
  with pytest.raises(UserError, match="model.fp8=true"):
    config_lib.validate(c)
