"""Low-bit inference through qwix (tl_jax/compress/lowbit.py) on a tiny random classifier.

The tiny classifier computes in float32, so every difference from the baseline is
quantization error, not bf16 rounding.

Error bounds. Symmetric per-output-channel quantization of a kernel column with fan-in
n puts uniform rounding noise of std step/sqrt(12) on each weight, step =
absmax/(qmax + 0.5); for Gaussian weights absmax is ~2.4 sigma (n = 64) to ~2.9 sigma
(n = 256), so the noise is ~0.6% of the weights' std at int8 (qmax 127) and ~10% at
int4 (qmax 7), and a matmul's output carries about the same relative error. A logit
sits behind about seven quantized matmuls (q/k/v and out, wi and wo, per layer, then
the head's two); independent errors add in quadrature, ~2.6x one: ~1.5% at int8
(int8 activations add about as much again) and ~25% at int4. The bounds below on the
relative RMS error of the logits are 3x (int8) and 1.4x (int4) those estimates.
A label flips only where the two logits' margin is smaller than its error: with
Gaussian margins and relative error r about 0.64 r of the examples, so argmax
agreement should be >= ~0.97 at int8 and >= ~0.84 at int4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

qwix = pytest.importorskip("qwix", reason="low-bit inference needs qwix (pip install qwix)")
# qwix 0.1.8 checks for nnx.VariableState, which flax 0.12 deprecates, on every parameter.
pytestmark = pytest.mark.filterwarnings("ignore:'VariableState' was removed:DeprecationWarning")

from tl_jax.compress import lowbit  # noqa: E402
from tl_jax.config import ModelConfig  # noqa: E402
from tl_jax.models.classifier import Classifier  # noqa: E402

VOCAB, LABELS, BATCH, SEQ = 512, 2, 256, 32
REL_RMS_BOUND = {"int8": 0.05, "int8-weight": 0.05, "int4-weight": 0.35}
AGREEMENT_BOUND = {"int8": 0.95, "int8-weight": 0.95, "int4-weight": 0.8}
QVALUE_DTYPE = {"int8": jnp.int8, "int8-weight": jnp.int8, "int4-weight": jnp.int4}
LOW_BIT = tuple(REL_RMS_BOUND)


def tiny_model(dtype: str = "float32", scan_layers: bool = False) -> Classifier:
  config = ModelConfig(num_layers=2, d_model=64, num_heads=2, dropout=0.0, dtype=dtype,
                       scan_layers=scan_layers)
  return Classifier(config, VOCAB, LABELS)


def make_batch(seed: int = 0):
  k_tokens, k_lengths = jax.random.split(jax.random.key(seed))
  tokens = jax.random.randint(k_tokens, (BATCH, SEQ), 0, VOCAB)
  lengths = jax.random.randint(k_lengths, (BATCH,), 8, SEQ + 1)  # right padding
  return tokens, lengths


def init_params(model, tokens):
  init = jax.jit(lambda key, t: model.init(key, t, deterministic=True)["params"])
  return nn.unbox(init(jax.random.key(0), tokens))


def float_logits(model, params, tokens, lengths):
  apply = lambda p, t, l: model.apply({"params": p}, t, deterministic=True, lengths=l)
  return jax.jit(apply)(params, tokens, lengths)


@pytest.fixture(scope="module")
def tiny():
  model = tiny_model()
  tokens, lengths = make_batch()
  params = init_params(model, tokens)
  return model, params, tokens, lengths, float_logits(model, params, tokens, lengths)


@pytest.fixture(scope="module")
def quantized(tiny):
  model, params = tiny[:2]
  return {mode: lowbit.low_bit_classifier(model, params, mode) for mode in LOW_BIT}


def test_baseline_mode_is_the_model(tiny):
  model, params, tokens, lengths, reference = tiny
  apply_fn, stored = lowbit.low_bit_classifier(model, params, "bf16")
  np.testing.assert_array_equal(jax.jit(apply_fn)(stored, tokens, lengths), reference)


@pytest.mark.parametrize("mode", LOW_BIT)
def test_logits_close_to_float(tiny, quantized, mode):
  _, _, tokens, lengths, reference = tiny
  apply_fn, qparams = quantized[mode]
  logits = jax.jit(apply_fn)(qparams, tokens, lengths, None)
  assert logits.shape == (BATCH, LABELS) and logits.dtype == jnp.float32
  rel_rms = float(jnp.linalg.norm(logits - reference) / jnp.linalg.norm(reference))
  agreement = float(jnp.mean(logits.argmax(-1) == reference.argmax(-1)))
  assert 0 < rel_rms < REL_RMS_BOUND[mode], rel_rms  # > 0: the weights really were quantized
  assert agreement >= AGREEMENT_BOUND[mode], agreement


@pytest.mark.parametrize("mode", LOW_BIT)
def test_dense_kernels_stored_as_integers(tiny, quantized, mode):
  params = tiny[1]
  qparams = quantized[mode][1]
  kernels = lowbit.quantized_kernels(qparams)
  assert sorted(kernels) == lowbit.dense_paths(params)
  assert len(kernels) == 2 * 6 + 2  # q, k, v, out, wi, wo per layer; the head's two
  for path, q in kernels.items():
    assert q.qvalue.dtype == QVALUE_DTYPE[mode], path
    assert q.qvalue.shape == params_at(params, path)["kernel"].shape, path
    assert jnp.issubdtype(q.scale.dtype, jnp.floating), path
  # Embedding lookups are not quantized: qwix intercepts matmuls, not `take`.
  assert qparams["token_embed"]["embedding"].dtype == jnp.float32


@pytest.mark.parametrize("mode,ratio", [("int8", 4), ("int8-weight", 4), ("int4-weight", 8)])
def test_param_bytes_drop(tiny, quantized, mode, ratio):
  params = tiny[1]
  qparams = quantized[mode][1]
  kernels = lowbit.quantized_kernels(qparams)
  float_bytes = sum(lowbit.param_bytes(params_at(params, p)["kernel"]) for p in kernels)
  low_bytes = lowbit.param_bytes(list(kernels.values()))
  # Below the ideal ratio by the per-channel scales: one float32 per output feature,
  # against 64..256 inputs (the widest overhead, fan-in 64: 4 bytes per 64 values).
  assert 0.85 * ratio < float_bytes / low_bytes <= ratio
  assert lowbit.param_bytes(qparams) < lowbit.param_bytes(params)


def test_param_bytes_counts_int4_as_half_a_byte():
  tree = {"a": jnp.zeros((10,), jnp.int4), "b": jnp.zeros((10,), jnp.int8),
          "c": jax.ShapeDtypeStruct((3, 4), jnp.float32), "d": jnp.zeros((7,), jnp.bfloat16)}
  assert lowbit.param_bytes(tree) == 5 + 10 + 48 + 14
  assert lowbit.param_bytes({"odd": jnp.zeros((3,), jnp.int4)}) == 2  # 12 bits round up


def test_int8_weight_values_are_rounded_over_absmax_scale(tiny, quantized):
  """qwix's symmetric per-channel grid: scale = absmax over the input axes / 127.5."""
  params = tiny[1]
  kernels = lowbit.quantized_kernels(quantized["int8-weight"][1])
  for path, n_in in (("encoder/layer_0/mlp/wi", 1), ("encoder/layer_1/attention/out", 2)):
    w = np.asarray(params_at(params, path)["kernel"], np.float32)
    q = kernels[path]
    in_axes = tuple(range(n_in))
    scale = np.max(np.abs(w), axis=in_axes, keepdims=True) / np.float32(127.5)
    np.testing.assert_allclose(np.asarray(q.scale, np.float32), scale, rtol=1e-6)
    ratio = w.astype(np.float64) / scale
    qvalue = np.asarray(q.qvalue, np.float64)
    # Each column's absmax weight lands on the tie +-127.5, which float32 division
    # rounds either way: there the value may be 127 or 128 in magnitude (saturated at 127).
    tie = np.abs(np.abs(ratio) - 127.5) < 1e-3
    assert tie.sum() <= scale.size  # at most one per output channel
    np.testing.assert_array_equal(qvalue[~tie], np.round(ratio[~tie]))
    assert np.all(np.isin(qvalue[tie], (-128, -127, 127)))
    error = np.abs(qvalue * scale - w) / scale  # in steps: at most half of one
    assert np.all(error[~tie] <= 0.5 + 1e-5) and np.all(error[tie] <= 0.5 + 1e-3)


def test_bf16_compute_and_scanned_layers():
  """bf16 compute: scales stored bf16; a scanned model is unrolled and matches unscanned."""
  tokens, lengths = make_batch(1)
  tokens, lengths = tokens[:32], lengths[:32]
  model = tiny_model("bfloat16", scan_layers=True)
  params = init_params(model, tokens)
  logits = {}
  for mode in ("bf16", "int8"):
    apply_fn, stored = lowbit.low_bit_classifier(model, params, mode)
    logits[mode] = jax.jit(apply_fn)(stored, tokens, lengths)
    assert "layer_1" in stored["encoder"] and "layers" not in stored["encoder"]
  kernels = lowbit.quantized_kernels(stored)
  assert {q.scale.dtype for q in kernels.values()} == {jnp.dtype(jnp.bfloat16)}
  assert stored["token_embed"]["embedding"].dtype == jnp.bfloat16
  reference = float_logits(model, params, tokens, lengths)
  # Stored at bf16 the matrices equal their casts at use; only XLA's fusion differs.
  np.testing.assert_allclose(logits["bf16"], reference, atol=2e-3)
  rel = float(jnp.linalg.norm(logits["int8"] - reference) / jnp.linalg.norm(reference))
  assert rel < REL_RMS_BOUND["int8"] + 0.03  # + bf16 rounding of activations and scales


def test_unknown_mode():
  model = tiny_model()
  with pytest.raises(ValueError, match="int8-weight"):
    lowbit.low_bit_classifier(model, {}, "fp3")


def params_at(params, path: str):
  for key in path.split("/"):
    params = params[key]
  return params
