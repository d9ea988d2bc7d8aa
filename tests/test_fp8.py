"""model.fp8: the train step's Dense matmuls on float8 operands, evaluation in model.dtype."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tl_jax import config as config_lib
from tl_jax import tasks
from tl_jax.models.layers import fp8_contract, fp8_quantize
from tl_jax.train import loop, metrics


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


def test_the_fp8_compile_hint_names_the_autotune_flag_only_where_it_helps():
  hint = loop.fp8_compile_hint(True, "gpu", "--xla_force_host_platform_device_count=8")
  assert "XLA_FLAGS=--xla_gpu_autotune_level=1" in hint
  assert loop.fp8_compile_hint(True, "gpu", "--xla_gpu_autotune_level=1") is None  # already set
  assert loop.fp8_compile_hint(True, "gpu", "--xla_gpu_autotune_level=4") is None  # chosen
  assert loop.fp8_compile_hint(False, "gpu", "") is None
  assert loop.fp8_compile_hint(True, "cpu", "") is None  # no GPU autotuner
  assert loop.fp8_compile_hint(True, "tpu", "") is None


@pytest.mark.parametrize("fused_qkv", [False, True])
def test_a_sharded_fp8_step_agrees_with_one_device(tmp_path, fused_qkv):
  """Under data x fsdp x tensor (2 x 2 x 2) each tensor's scale is its global amax: the losses
  match one device's up to the float rounding that moves a few fp8 roundings; so they do with
  model.fused_qkv on, whose stacked kernels are split over the tensor axis by their heads."""
  curves = {}
  for name, mesh in (("single", (1, 1, 1)), ("sharded", (2, 2, 2))):
    c = tiny(True, 24)
    c.model.fused_qkv = fused_qkv
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = mesh
    c.data.max_train_tokens, c.train.log_every = 200_000, 8
    workdir = str(tmp_path / name)
    assert tasks.run(c, workdir, jax.devices("cpu")[:int(np.prod(mesh))]) == 0
    curves[name] = [l["loss"] for l in metrics.read(workdir) if "loss" in l]
  assert len(curves["single"]) == 3 and curves["single"][-1] < curves["single"][0]
  np.testing.assert_allclose(curves["sharded"], curves["single"], rtol=5e-4)
