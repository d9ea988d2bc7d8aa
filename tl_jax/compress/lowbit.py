"""Low-bit inference of a classifier through qwix: int8 (w8a8), int8 and int4 weight-only.

`low_bit_classifier(model, params, mode)` returns `(apply_fn, params)` for
`jax.jit(apply_fn)(params, tokens, lengths, types)` -> float32 logits, where the
Dense kernels of `params` are stored as int8/int4 `qwix.QArray`s (integer values
plus a per-output-channel scale), so the device holds them at low bit:

- "bf16": the model as is, its matrices (embeddings, kernels) stored at the compute
  dtype (bf16 by default; the model casts them to it at use anyway, so under jit the
  logits equal those from the float32 parameters bit for bit) and its vectors
  (biases, LayerNorm) at float32;
- "int8": w8a8, int8 weights and int8 per-token dynamic activations, an
  int8 x int8 -> int32 `dot_general` scaled afterwards;
- "int8-weight" / "int4-weight": weight-only, the kernel dequantized to the compute
  dtype inside the matmul, which stays a floating-point one.

Only the `Dense` layers (attention projections, MLP, classification head) are
quantized. Embedding lookups (`take`), LayerNorm, biases and the attention score and
value products are left at the compute dtype: qwix intercepts `dot_general`,
`einsum` and `conv`, and the rules here name the Dense modules only.

The qwix flow is its linen PTQ one: `qwix.quantize_model(model, PtqProvider(rules))`,
`jax.eval_shape` of the quantized model's `init` for the abstract quantized tree (it
says how each kernel is quantized), then `qwix.quantize_params(float_params, abstract)`.
Two things qwix 0.1.8 does not do for tl_jax's models are worked around here rather
than in models/: a kernel cast with `.astype` (see `_provider_class`) and scanned
layers (see `unrolled`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MODES = ("bf16", "int8", "int8-weight", "int4-weight")

# mode -> qwix.QuantizationRule fields (qtypes as jnp dtypes); "bf16" quantizes nothing.
_RULES = {
    "int8": {"weight_qtype": jnp.int8, "act_qtype": jnp.int8},
    "int8-weight": {"weight_qtype": jnp.int8},
    "int4-weight": {"weight_qtype": jnp.int4},
}


def _import_qwix():
  try:
    import qwix
  except ImportError:
    raise ImportError("low-bit inference needs qwix: `pip install qwix` (or put its wheel on "
                      "PYTHONPATH).") from None
  return qwix


def dense_paths(params) -> list[str]:
  """Module paths ("encoder/layer_0/mlp/wi", ...) of the layers that own a `kernel`."""
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(params))
  return sorted("/".join(k[:-1]) for k in flat if k[-1] == "kernel")


def _provider_class(qwix):
  """qwix's PtqProvider with one fix for modules that cast the kernel themselves.

  tl_jax's `Dense` calls `kernel.astype(compute_dtype)` before `dot_general`. qwix's
  `WithAux.astype` then tries to re-box the QArray as if it were a flax metadata box
  and raises "Unsupported type: QArray" (qwix 0.1.8; flax's own Dense goes through
  `promote_dtype`, which qwix intercepts instead). Here the quantized kernel is
  handed to the module as a WithAux whose `astype` only casts the scale, which is
  what QArray.astype means: the dequantized value's dtype.
  """
  from qwix._src.providers import ptq  # WithAux is not exported; the class is stable in 0.1.x

  @flax.struct.dataclass
  class CastableWithAux(ptq.WithAux):

    def astype(self, dtype):
      return self.replace(array=self.array.astype(dtype))

  class Provider(qwix.PtqProvider):

    def nn_param(self, module, name, *args, **kwargs):
      value = super().nn_param(module, name, *args, **kwargs)
      if isinstance(value, ptq.WithAux) and not isinstance(value, CastableWithAux):
        return CastableWithAux(value.array, value.how)
      return value

  return Provider


def _cast_matrices(tree, dtype):
  """Floating-point leaves of 2+ dims (embeddings, kernels, scales) to `dtype`.

  The model casts each of them to the compute dtype at use, so storing them cast changes
  no logit. Vectors stay float32: LayerNorm applies its scale and bias in float32.
  Integer leaves (quantized values) stay as they are.
  """
  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim >= 2 else x
  return jax.tree.map(cast, tree)


def unrolled(model: nn.Module, params) -> tuple[nn.Module, Any]:
  """The model with `scan_layers` off (and no remat), and its params as `layer_{i}`.

  qwix's `quantize_params` quantizes a scanned kernel [layers, ...] with the per-layer
  axes it saw inside the scan, so its scales come out wrong (and `apply` then fails);
  unrolling the layers avoids that and costs only compile time.
  """
  config = model.config
  if not config.scan_layers and config.remat == "none":
    return model, params
  model = model.clone(config=dataclasses.replace(config, scan_layers=False, remat="none"))
  if config.scan_layers:
    encoder = dict(params["encoder"])
    stacked = encoder.pop("layers")
    for i in range(config.num_layers):
      encoder[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    params = {**params, "encoder": encoder}
  return model, params


def low_bit_classifier(model: nn.Module, params, mode: str, *, example_len: int = 8
                       ) -> tuple[Callable[..., jax.Array], Any]:
  """`(apply_fn, params)` of `model` (a `Classifier`) at `mode`, one of `MODES`.

  `params` are the float parameters (boxed or not). `apply_fn(params, tokens,
  lengths=None, types=None)` gives float32 logits [B, labels]; jit it. The returned
  params hold the Dense kernels as `qwix.QArray`s (int8/int4 values, scales at the
  compute dtype), the other matrices at the compute dtype and the vectors at float32.
  A scanned model is unrolled first (`unrolled`), params included. Quantization runs where
  `params` live: quantize on the host and `jax.device_put` the result to keep the
  float weights off the accelerator.
  """
  if mode not in MODES:
    raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}.")
  model, params = unrolled(model, nn.meta.unbox(params))
  compute_dtype = jnp.dtype(model.config.dtype)

  if mode == "bf16":
    def apply_fn(p, tokens, lengths=None, types=None):
      return model.apply({"params": p}, tokens, deterministic=True, lengths=lengths, types=types)
    return apply_fn, _cast_matrices(params, compute_dtype)

  qwix = _import_qwix()
  # Exactly the Dense modules, and only their dot_general: a broader rule would also
  # quantize the attention's own einsums (scores, weighted values), which hold no weight.
  pattern = "|".join(re.escape(p) for p in dense_paths(params))
  rule = qwix.QuantizationRule(module_path=pattern, op_names=("dot_general",), **_RULES[mode])
  provider = _provider_class(qwix)([rule])
  qmodel = qwix.quantize_model(model, provider)

  # The abstract quantized tree says how each kernel is quantized (channelwise over its
  # output axes, absmax/(qmax + 0.5) scales); initialising it abstractly costs nothing.
  tokens = jnp.zeros((1, example_len), jnp.int32)
  abstract = jax.eval_shape(lambda: qmodel.init(jax.random.key(0), tokens, deterministic=True))
  if unused := provider.get_unused_rules():
    raise RuntimeError(f"qwix matched no Dense layer of the model with {unused}.")
  qparams = qwix.quantize_params(params, abstract["params"])
  qparams = _cast_matrices(qparams, compute_dtype)

  def apply_fn(p, tokens, lengths=None, types=None):
    return qmodel.apply({"params": p}, tokens, deterministic=True, lengths=lengths, types=types)
  return apply_fn, qparams


def _bits(dtype) -> int:
  dtype = np.dtype(dtype)
  if dtype == np.bool_:
    return 8
  for info in (jnp.iinfo, jnp.finfo):
    try:
      return info(dtype).bits
    except ValueError:
      pass
  return dtype.itemsize * 8


def param_bytes(tree) -> int:
  """Bytes the leaves of `tree` hold, sub-byte types (int4, ...) at their bit width.

  Leaves may be arrays or `jax.ShapeDtypeStruct`s; QArrays count their values and scales.
  """
  bits = sum(int(np.prod(x.shape)) * _bits(x.dtype) for x in jax.tree.leaves(nn.meta.unbox(tree)))
  return -(-bits // 8)


def quantized_kernels(tree) -> dict[str, Any]:
  """`{module path: QArray}` of the quantized Dense kernels of a `low_bit_classifier` tree."""
  qwix = _import_qwix()
  flat = flax.traverse_util.flatten_dict(tree)  # stops at WithAux, which is no dict
  kernels = {"/".join(k[:-1]): getattr(v, "array", v) for k, v in flat.items() if k[-1] == "kernel"}
  return {path: q for path, q in kernels.items() if isinstance(q, qwix.QArray)}
