"""GPTQ: the same algorithm as qwix's reference, layer outputs kept better than by rounding to
nearest, uniform storage, Hessians from the model's own Dense inputs."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.compress import hessians
from tl_jax.compress import quantize as q
from tl_jax.compress.layout import model_layouts
from tl_jax.compress.methods import QUANTIZERS
from tl_jax.compress.methods.gptq import gptq_matrix
from tl_jax.config import ModelConfig, QuantConfig
from tl_jax.models.classifier import Classifier


def correlated_problem(num_in=96, num_out=40, samples=512, seed=0):
  """Weights [I, O] and inputs [N, I] with strongly correlated features, as activations are."""
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(num_in, num_in)) * np.linspace(2.0, 0.05, num_in)
  x = rng.normal(size=(samples, num_in)) @ mixing
  w = rng.normal(size=(num_in, num_out)) * 0.1
  return jnp.asarray(w, jnp.float32), jnp.asarray(x, jnp.float32)


def output_error(x, w, wq) -> float:
  return float(jnp.sum((x @ w - x @ wq) ** 2))


def gptq_dequantized(w, x, bits, granularity="channel", symmetric=True, mask=None, group_size=32):
  codes, scale, zero = gptq_matrix(w, x.T @ x, bits, symmetric=symmetric, granularity=granularity,
                                   group_size=group_size, block_size=32, damping=0.01, mask=mask)
  out = q.uniform_dequantize(codes[None], scale[None], zero[None])[0]
  return (out if mask is None else jnp.where(mask, out, 0.0)), codes  # as apply.dequantize does


def rtn_dequantized(w, bits, granularity="channel", symmetric=True, mask=None, group_size=32):
  codes, scale, zero = q.uniform_codes(w[None], bits, symmetric=symmetric, granularity=granularity,
                                       group_size=group_size, mask=None if mask is None else mask[None])
  out = q.uniform_dequantize(codes, scale, zero)[0]
  return out if mask is None else jnp.where(mask, out, 0.0)


@pytest.mark.parametrize("bits,granularity,symmetric", [
    (2, "channel", True), (3, "channel", True), (4, "channel", True), (3, "tensor", True),
    (3, "group", True), (3, "channel", False)])
def test_gptq_keeps_layer_outputs_better_than_rounding(bits, granularity, symmetric):
  w, x = correlated_problem()
  gptq, codes = gptq_dequantized(w, x, bits, granularity, symmetric)
  rtn = rtn_dequantized(w, bits, granularity, symmetric)
  assert int(codes.min()) >= 0 and int(codes.max()) < 2 ** bits
  assert output_error(x, w, gptq) < 0.8 * output_error(x, w, rtn)


def test_gptq_with_a_mask_keeps_pruned_weights_zero_and_repairs_pruning():
  w, x = correlated_problem(seed=1)
  mask = jnp.abs(w) > jnp.quantile(jnp.abs(w), 0.5)
  gptq, _ = gptq_dequantized(w, x, 4, mask=mask)
  # Pruned then rounded, against pruned then GPTQ (which also spreads the pruning error).
  assert output_error(x, w, gptq) < 0.8 * output_error(x, w, rtn_dequantized(w, 4, mask=mask))


def test_one_bit_gptq_binarizes():
  w, x = correlated_problem(seed=2)
  gptq, codes = gptq_dequantized(w, x, 1)
  assert set(np.unique(np.asarray(codes))) <= {0, 1}
  assert output_error(x, w, gptq) < output_error(x, w, rtn_dequantized(w, 1))


def test_bits_are_traced_values():
  w, x = correlated_problem(num_in=32, num_out=8)
  traces = []

  @jax.jit
  def run(bits):
    traces.append(1)
    return gptq_matrix(w, x.T @ x, bits, symmetric=True, granularity="channel", group_size=32,
                       block_size=16, damping=0.01)[0]
  for bits in (2, 4, 8):
    assert int(run(jnp.int32(bits)).max()) < 2 ** bits
  assert len(traces) == 1


@pytest.mark.parametrize("bits,qtype", [(4, jnp.int4), (8, jnp.int8)])
def test_matches_qwix_gptq(bits, qtype):
  """qwix's gptq_core (the reference algorithm in JAX) on the same weights and Hessian."""
  qwix_gptq = pytest.importorskip("qwix.contrib.gptq_core",
                                  reason="the cross-check needs qwix (pip install qwix)")
  from qwix._src.core import qarray
  w, x = correlated_problem(num_in=64, num_out=24, seed=3)
  h = x.T @ x
  ours, codes = gptq_dequantized(w, x, bits)
  how = qarray.HowToQuantize(qtype=qtype, channelwise_axes=[0], calibration_method="absmax")
  reference, _ = qwix_gptq.quantize_weight(w.T, h, how, blocksize=32, percdamp=0.01)
  theirs = (reference.qvalue.astype(jnp.float32) * reference.scale).T
  # Same codes up to rounding ties flipped by float order; outputs within a fraction of a percent.
  same = float(jnp.mean((codes - 2 ** (bits - 1)) == reference.qvalue.T.astype(jnp.int32)))
  assert same > 0.99
  np.testing.assert_allclose(output_error(x, w, ours), output_error(x, w, theirs), rtol=0.02)


def test_gptq_part_is_stored_like_uniform():
  w, x = correlated_problem(num_in=32, num_out=16)
  quant = QuantConfig(method="gptq", bits=3, gptq_block_size=16)
  gptq, uniform = QUANTIZERS["gptq"], QUANTIZERS["uniform"]
  part = gptq.encode(w[None], 3, quant, None, (x.T @ x)[None])
  assert part["codes"].dtype == jnp.uint8 and part["scale"].shape == (1, 1, 16)
  # Decoded by the uniform method, counted and exported as it is.
  np.testing.assert_array_equal(gptq.decode(part), uniform.decode(part))
  assert gptq.label(quant) == "gptq3b-sym-channel"
  assert gptq.static_key(quant) != uniform.static_key(quant)


def test_hessians_are_the_dense_inputs_of_the_model():
  config = ModelConfig(num_layers=1, d_model=32, num_heads=2, max_len=16, dropout=0.0,
                       dtype="float32")
  model = Classifier(config, 128, 2)
  tokens = jax.random.randint(jax.random.key(0), (4, 16), 5, 128)
  params = model.init(jax.random.key(1), tokens[:1], deterministic=True)["params"]
  params = jax.tree.map(lambda a: getattr(a, "value", a), params,
                        is_leaf=lambda a: hasattr(a, "value"))
  layouts = model_layouts(model, tokens[:1])
  wanted = ["encoder/layer_0/mlp/wo/kernel", "encoder/layer_0/attention/out/kernel",
            "head_out/kernel", "token_embed/embedding"]
  forward = lambda p, t: model.apply({"params": p}, t, deterministic=True)
  found = hessians.collect(forward, params, [tokens, tokens], layouts, wanted)
  # The embedding is looked up, not multiplied: no Hessian, so GPTQ rounds it to nearest.
  assert set(found) == set(wanted) - {"token_embed/embedding"}
  assert found["encoder/layer_0/mlp/wo/kernel"].shape == (1, 128, 128)
  assert found["encoder/layer_0/attention/out/kernel"].shape == (1, 32, 32)  # heads x kv
  # The FFN output's inputs are GELU activations: X^T X / N, recomputed by hand.
  captured = {}

  def keep(next_fun, args, kwargs, context):
    if "/".join(context.module.path) == "encoder/layer_0/mlp/wo":
      captured.setdefault("x", []).append(args[0].reshape(-1, 128))
    return next_fun(*args, **kwargs)

  import flax.linen as nn
  with nn.intercept_methods(keep):
    forward(params, tokens)
  x = captured["x"][0]
  np.testing.assert_allclose(found["encoder/layer_0/mlp/wo/kernel"][0], x.T @ x / x.shape[0],
                             rtol=1e-4, atol=1e-5)


def test_scanned_models_are_refused_in_one_sentence():
  from tl_jax.errors import UserError
  config = ModelConfig(num_layers=2, d_model=32, num_heads=2, max_len=16, scan_layers=True)
  layouts = model_layouts(Classifier(config, 128, 2), np.zeros((1, 16), np.int32))
  with pytest.raises(UserError, match="scan_layers=false"):
    hessians.check_unscanned(layouts, [p for p in layouts if "mlp/wi/kernel" in p])


def test_any_block_size_gives_the_codes_of_one_block():
  """The lazy batch update only delays when a block's errors reach later rows, so per-channel
  codes do not depend on the block size, nor on a last block shorter than the rest."""
  w, x = correlated_problem(num_in=100, num_out=24, seed=4)
  run = lambda block: gptq_matrix(w, x.T @ x, 3, symmetric=True, granularity="channel",
                                  group_size=32, block_size=block, damping=0.01)[0]
  whole = run(100)
  for block in (24, 32, 64):  # 4 blocks of 24 and one of 4; 3 of 32 and 4; 64 and 36
    assert float(jnp.mean(run(block) == whole)) > 0.99, block


def test_the_program_does_not_grow_with_the_number_of_blocks():
  """The blocks are a loop, not unrolled: 16 blocks lower to about the program of 2."""
  w, x = correlated_problem(num_in=256, num_out=16, samples=300)
  size = lambda block: len(jax.jit(lambda w, h: gptq_matrix(
      w, h, 4, symmetric=True, granularity="group", group_size=32, block_size=block,
      damping=0.01)[0]).lower(w, x.T @ x).as_text())
  assert size(16) < 1.2 * size(128)


def test_the_hessians_are_factorized_one_at_a_time():
  """jaxlib's CPU Cholesky splits a batch over XLA's threads and waits for them; two such calls
  side by side deadlocked a 2-core machine (jax 0.10.2), so encode factorizes one layer at a
  time, never a batch."""
  w, x = correlated_problem(num_in=32, num_out=16)
  h = (x.T @ x)[:32, :32]
  quant = QuantConfig(method="gptq", bits=4, gptq_block_size=16)
  encode = lambda w3, h3: QUANTIZERS["gptq"].encode(w3, 4, quant, None, h3)["codes"]
  text = str(jax.make_jaxpr(encode)(jnp.stack([w] * 3), jnp.stack([h] * 3)))
  shapes = re.findall(r":f32\[([\d,]+)\] = cholesky", text)
  assert shapes and all(s == "32,32" for s in shapes), shapes
