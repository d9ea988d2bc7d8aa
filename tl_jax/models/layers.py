"""Transformer building blocks with logical axis names on every parameter.

Logical names (`embed`, `heads`, `kv`, `mlp`, `vocab`, ...) say what an axis is;
`tl_jax/parallel/rules.py` says where it goes on the mesh. No module here knows
about meshes.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.config import ModelConfig
from tl_jax.models import decoding
from tl_jax.models.dropout import dropout

INIT = nn.initializers.normal(stddev=0.02)  # BERT/RoBERTa initialisation


def dtype_of(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def attention_implementation(config: ModelConfig) -> str | None:
  """`jax.nn.dot_product_attention`'s implementation for this config (None = XLA)."""
  if config.attention == "cudnn":
    return "cudnn"
  if config.attention == "auto" and jax.default_backend() == "gpu" and config.dtype != "float32":
    return "cudnn"
  return None


def layer_norm(config: ModelConfig, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=config.ln_eps, dtype=dtype_of(config.dtype), param_dtype=jnp.float32, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def embed_grad_method(setting: str) -> str:
  """The method `model.embed_grad=setting` uses on this backend.

  `auto` picks the sorted runs on GPU (on one H200, 2026-12-04, 1.04x the one-hot's training
  step on RoBERTa-large S=512 and 1.10x on Transformer-big S=T=128: docs/BENCHMARKS.md), the
  one-hot product on TPU (whose matrix units take it; sorting there is slow) and the scatter on
  the CPU, where the product is ~100x slower.
  """
  if setting != "auto":
    return setting
  return {"cpu": "scatter", "gpu": "sorted"}.get(jax.default_backend(), "onehot")


def embedding_lookup(table, ids, grad: str = "onehot"):
  """table[ids], whose gradient with respect to `table` is computed by `grad`:

  - scatter: XLA's scatter-add (the gradient of `jnp.take`). On GPU it runs with atomics,
    which serialise on repeated ids: with 12% of a masked-LM batch being <mask>, it took half
    of a RoBERTa-base step on an H100.
  - onehot: the product one_hot(ids)^T @ grad, 2 x tokens x vocab x width FLOPs on the
    matrix units whatever the ids (`one_hot_table_grad`).
  - sorted: the ids sorted, each run of equal ids summed, each distinct id's row written once
    (`sorted_table_grad`), as PyTorch's embedding backward does.

  onehot and sorted accumulate in float32 and round once to the table's dtype.
  """
  if grad == "scatter":
    return jnp.take(table, ids, axis=0)
  return _lookup(grad, table, ids)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lookup(grad, table, ids):
  del grad
  return jnp.take(table, ids, axis=0)


def _lookup_forward(grad, table, ids):
  return _lookup(grad, table, ids), (table, ids)


def _lookup_backward(grad, residuals, upstream):
  table, ids = residuals
  table_grad = {"onehot": one_hot_table_grad, "sorted": sorted_table_grad}[grad]
  flat = upstream.reshape(-1, upstream.shape[-1])
  return table_grad(ids.reshape(-1), flat, table.shape[0]).astype(table.dtype), None


_lookup.defvjp(_lookup_forward, _lookup_backward)


def one_hot_table_grad(ids, upstream, vocab: int):
  """sum over i of upstream[i] into row ids[i] of a [vocab, width] float32 zero table, as the
  product one_hot(ids)^T @ upstream (ids [N], upstream [N, width])."""
  one_hot = jax.nn.one_hot(ids, vocab, dtype=upstream.dtype)
  return jax.lax.dot_general(one_hot, upstream, (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def sorted_table_grad(ids, upstream, vocab: int):
  """`one_hot_table_grad`'s result by sorting: no scatter of it has two updates on one row.

  1. Sort the ids and permute the upstream rows alike, so equal ids form runs.
  2. Sum each run (in float32) into slot k of a compacted [N, width] array, k counting the
     runs. The run index is sorted, which XLA:GPU's scatter turns into a per-warp sum of each
     run with one atomic per warp and run (ScatterWithDistributedIndices), not one per id.
  3. Write slot k into the row of its id. These indices are unique and sorted: the slots past
     the last run, and those of ids outside [0, vocab), point at vocab + k, past the table,
     and are dropped (the one-hot product gives such ids no row either).
  """
  n = ids.shape[0]
  order = jnp.argsort(ids)
  ids = ids[order]
  starts = (ids != jnp.roll(ids, 1)).at[0].set(True)
  run = jnp.cumsum(starts, dtype=jnp.int32) - 1
  sums = jax.ops.segment_sum(upstream[order].astype(jnp.float32), run, n, indices_are_sorted=True)
  past_the_table = vocab + jnp.arange(n, dtype=jnp.int32)
  valid = (ids >= 0) & (ids < vocab)
  slot_ids = past_the_table.at[run].set(jnp.where(valid, ids, past_the_table[run]),
                                        indices_are_sorted=True)
  return jnp.zeros((vocab, upstream.shape[-1]), jnp.float32).at[slot_ids].set(
      sums, indices_are_sorted=True, unique_indices=True, mode="drop")


class Embed(nn.Embed):
  """nn.Embed (same parameters, same `attend`) whose lookup's gradient is computed by `grad`
  (scatter | onehot | sorted); see `embedding_lookup`."""
  grad: str = "onehot"

  def __call__(self, inputs):
    if self.grad == "scatter":
      return super().__call__(inputs)
    return embedding_lookup(self.embedding.astype(self.dtype), inputs, self.grad)


class Dense(nn.Module):
  """x @ kernel + bias, contracting the last `len(axes) - len(features)` axes of x.

  The kernel is created at its full logical shape (flax's DenseGeneral creates a
  flattened one and reshapes, which trips the logical sharding constraint).
  """
  features: tuple[int, ...]
  axes: tuple[str, ...]  # logical names of the kernel: input axes, then output axes
  config: ModelConfig
  weights_only: bool = False  # return (kernel, bias) unapplied, for a product of several at once

  @nn.compact
  def __call__(self, x):
    n_in = len(self.axes) - len(self.features)
    kernel = self.param("kernel", nn.with_logical_partitioning(INIT, self.axes),
                        x.shape[-n_in:] + tuple(self.features), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[n_in:]),
                      tuple(self.features), jnp.float32)
    if self.weights_only:
      return kernel, bias
    return apply_dense(x, kernel, bias, n_in, self.config)


def apply_dense(x, kernel, bias, n_in: int, config: ModelConfig):
  """x's last `n_in` axes against the kernel's first, plus the bias, in the compute dtype (and on
  fp8 operands with `model.fp8`)."""
  dtype = dtype_of(config.dtype)
  product = fp8_contract if config.fp8 else contract
  return product(x.astype(dtype), kernel.astype(dtype), n_in) + bias.astype(dtype)


def contract(x, w, n_in: int, preferred_element_type=None):
  """x's last `n_in` axes against w's first `n_in`: a Dense layer's product."""
  dims = ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ()))
  return jax.lax.dot_general(x, w, dims, preferred_element_type=preferred_element_type)


def fp8_quantize(x, fp8_dtype):
  """(q, scale) with q = x / scale in the float8 format `fp8_dtype` and scale = amax(|x|) / the
  format's largest value, so the tensor's largest magnitude lands on it (current scaling: the
  scale comes from this tensor, not from a history of earlier steps). float32 scale; 1 for an
  all-zero tensor."""
  amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
  scale = jnp.where(amax > 0, amax / float(jnp.finfo(fp8_dtype).max), 1.0)
  return fp8_cast(x, scale, fp8_dtype), scale


def fp8_cast(x, scale, fp8_dtype):
  """x / scale in `fp8_dtype`, saturating: rounding can carry |x| / scale just past the format's
  largest value, which e4m3fn (no infinity) would make NaN."""
  largest = float(jnp.finfo(fp8_dtype).max)
  return jnp.clip(x.astype(jnp.float32) / scale, -largest, largest).astype(fp8_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fp8_contract(x, w, n_in: int):
  """`contract(x, w, n_in)` for operands of one dtype, with both rounded to float8 e4m3 and, in
  the backward pass, the incoming gradient rounded to e5m2 (the format with range for
  gradients), each with its own per-tensor scale.

  Each product is a dot of two fp8 tensors, written in the operands' dtype, then multiplied by
  the two scales. This direct form is meant for cuBLASLt's fp8 matmul; the other form,
  dequantized operands into a plain dot, relies on XLA matching the pattern, which has broken
  between XLA versions. bench/speed.py's fp8 variant counts the fp8 matmuls a compiled step
  runs. The residuals are the fp8 operands: half the bytes of bf16 ones."""
  return _fp8_forward(x, w, n_in)[0]


def _fp8_forward(x, w, n_in):
  if x.dtype != w.dtype:
    raise TypeError(f"fp8_contract needs operands of one dtype, got {x.dtype} and {w.dtype}")
  xq, x_scale = fp8_quantize(x, jnp.float8_e4m3fn)
  wq, w_scale = fp8_quantize(w, jnp.float8_e4m3fn)
  y = contract(xq, wq, n_in, preferred_element_type=x.dtype) * (x_scale * w_scale).astype(x.dtype)
  return y, (xq, x_scale, wq, w_scale)


def _fp8_backward(n_in, residuals, g):
  xq, x_scale, wq, w_scale = residuals
  gq, g_scale = fp8_quantize(g, jnp.float8_e5m2)
  free = g.ndim - (wq.ndim - n_in)  # the axes of x that are not contracted (batch, length, ...)
  # dx: the gradient's output axes against the kernel's; dw: x's free axes against the gradient's.
  out_axes = (tuple(range(free, g.ndim)), tuple(range(n_in, wq.ndim)))
  free_axes = (tuple(range(free)), tuple(range(free)))
  dx = jax.lax.dot_general(gq, wq, (out_axes, ((), ())), preferred_element_type=g.dtype)
  dw = jax.lax.dot_general(xq, gq, (free_axes, ((), ())), preferred_element_type=g.dtype)
  return (dx * (g_scale * w_scale).astype(g.dtype), dw * (x_scale * g_scale).astype(g.dtype))


fp8_contract.defvjp(_fp8_forward, _fp8_backward)


def dense(features, axes: tuple, config: ModelConfig, name: str | None = None,
          weights_only: bool = False) -> Dense:
  return Dense(features if isinstance(features, tuple) else (features,), axes, config, name=name,
               weights_only=weights_only)


class Attention(nn.Module):
  """Multi-head attention: self-attention, cross-attention (`kv`), or one incremental step.

  Padding and packing are given as `lengths` (right padding, the cuDNN-friendly form)
  or as a boolean `mask` broadcastable to [batch, 1, queries, keys]. With
  `decode_position` set, `x` is one new position whose keys and values are written
  into the `cache` collection at that index; it then attends to positions up to it.

  With `beams` set (a decode step's cross-attention), `x` is one position of each of
  B * beams rows, beam-major within an example, and `kv` the B examples' source states. The
  source's keys and values are projected once, on the call that creates the `source_kv`
  collection, and read from it on every later step; each example's beams attend to them as
  `beams` queries of one row, so the source is neither projected again nor copied per beam.

  With `lineage` set as well as `decode_position` (a beam search that does not reorder the
  cache), each row reads position t of its prefix from the row `lineage` names for it
  (`decoding.read_through_lineage`).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x, kv=None, mask=None, lengths=None, decode_position=None, cache_len: int = 0,
               beams: int = 0, lineage=None):
    cfg = self.config
    head_dim = cfg.d_model // cfg.num_heads
    features, axes = (cfg.num_heads, head_dim), ("embed", "heads", "kv")
    heads = lambda t: nn.with_logical_constraint(t, ("batch", "length", "heads", "kv"))
    proj = lambda name, t: heads(dense(features, axes, cfg, name=name)(t))

    def projections(names, t):  # the named projections of one input
      if not cfg.fused_qkv:
        return [proj(name, t) for name in names]
      made = [dense(features, axes, cfg, name=name, weights_only=True)(t) for name in names]
      kernel = jnp.stack([w for w, _ in made], axis=1)  # [embed, projection, heads, kv]
      bias = jnp.stack([b for _, b in made])
      out = apply_dense(t, kernel, bias, 1, cfg)  # [batch, length, projection, heads, kv]
      return [heads(out[:, :, i]) for i in range(len(names))]

    if beams:
      q = proj("query", x)
      k = self.variable("source_kv", "source_key", proj, "key", kv).value
      v = self.variable("source_kv", "source_value", proj, "value", kv).value
      q = q.reshape((k.shape[0], beams) + q.shape[2:])  # [B, beams, heads, kv]: beams as queries
      out = jax.nn.dot_product_attention(q, k, v, mask=mask).reshape(x.shape[:2] + q.shape[2:])
      return dense(cfg.d_model, ("heads", "kv", "embed"), cfg, name="out")(out)
    if kv is None:
      q, k, v = projections(("query", "key", "value"), x)
    else:
      (q,), (k, v) = projections(("query",), x), projections(("key", "value"), kv)
    implementation = attention_implementation(cfg)
    if decode_position is not None:
      shape = (x.shape[0], cache_len, cfg.num_heads, head_dim)
      cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
      cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
      at = (0, decode_position, 0, 0)
      cached_k.value = k = jax.lax.dynamic_update_slice(cached_k.value, k, at)
      cached_v.value = v = jax.lax.dynamic_update_slice(cached_v.value, v, at)
      if lineage is not None:
        k, v = decoding.read_through_lineage(k, lineage), decoding.read_through_lineage(v, lineage)
      mask = (jnp.arange(cache_len) <= decode_position)[None, None, None, :]
      implementation = None  # one query row: XLA's kernel, and cuDNN refuses such masks
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
        implementation=implementation)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return dense(cfg.d_model, ("heads", "kv", "embed"), cfg, name="out")(out)


@jax.custom_vjp
def gelu(x):
  """GELU with the exact (erf) form, as RoBERTa and Hugging Face use; its gradient is remade
  from `x` alone, in float32. Autodiff of the same function keeps three [tokens, d_ff] tensors
  for the backward pass; this keeps one. On RoBERTa-large S=512 B=32 that is 5.8 GiB less peak
  memory at the same speed (H100, 2026-12-05, docs/BENCHMARKS.md "Third H100 lease")."""
  return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  x32 = x.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(x32 * (2.0 ** -0.5)))
  pdf = jnp.exp(-0.5 * x32 * x32) * (2.0 * jnp.pi) ** -0.5
  return ((g.astype(jnp.float32) * (cdf + x32 * pdf)).astype(g.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)

_TANH_C, _TANH_A = (2.0 / jnp.pi) ** 0.5, 0.044715  # the tanh form's tanh(C (x + A x^3))


@jax.custom_vjp
def gelu_tanh(x):
  """GELU's tanh approximation (the original BERT's, GPT-2's; Hugging Face's "gelu_new"), with its
  gradient remade from `x` alone in float32, as `gelu`'s is. Within 5e-4 of the exact form; the
  tanh costs less than the erf in the MLP's elementwise passes (docs/BENCHMARKS.md, 2026-12-07)."""
  return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_bwd(x, g):
  x32 = x.astype(jnp.float32)
  # 0.5 (1 + tanh(u)) is sigmoid(2u), and 1 - tanh(u) is 2 sigmoid(-2u): written so, the tail
  # where tanh(u) is near -1 keeps its digits (1 + tanh(u) in float32 loses them).
  u2 = 2 * _TANH_C * (x32 + _TANH_A * x32 ** 3)
  cdf = jax.nn.sigmoid(u2)
  slope = cdf * (1.0 + x32 * jax.nn.sigmoid(-u2) * 2 * _TANH_C * (1.0 + 3 * _TANH_A * x32 * x32))
  return ((g.astype(jnp.float32) * slope).astype(g.dtype),)


gelu_tanh.defvjp(lambda x: (gelu_tanh(x), x), _gelu_tanh_bwd)


def activation(config: ModelConfig):
  """The model's GELU, as `model.gelu` names it: exact (erf) or tanh."""
  return {"exact": gelu, "tanh": gelu_tanh}[config.gelu]


class MLP(nn.Module):
  config: ModelConfig
  d_ff: int

  @nn.compact
  def __call__(self, x, deterministic: bool):
    h = dense(self.d_ff, ("embed", "mlp"), self.config, name="wi")(x)
    h = nn.with_logical_constraint(activation(self.config)(h), ("batch", "length", "mlp"))
    return dense(self.config.d_model, ("mlp", "embed"), self.config, name="wo")(h)


class EncoderLayer(nn.Module):
  """One Transformer layer, post-LN (BERT/RoBERTa) or pre-LN."""
  config: ModelConfig
  d_ff: int
  deterministic: bool

  @nn.compact
  def __call__(self, x, lengths=None, mask=None):
    cfg = self.config
    attention = lambda h: Attention(cfg, name="attention")(h, mask=mask, lengths=lengths)
    mlp = lambda h: MLP(cfg, self.d_ff, name="mlp")(h, self.deterministic)
    x = residual(cfg, self.deterministic, "ln_attention", attention, x)
    x = residual(cfg, self.deterministic, "ln_mlp", mlp, x)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def residual(cfg: ModelConfig, deterministic: bool, ln_name: str, sublayer, x):
  """x + sublayer(x) with dropout, normalised after (post-LN) or before (pre-LN)."""
  drop = dropout(cfg)
  if cfg.pre_ln:
    return x + drop(sublayer(layer_norm(cfg, ln_name)(x)), deterministic=deterministic)
  return layer_norm(cfg, ln_name)(x + drop(sublayer(x), deterministic=deterministic))


class ScannedLayer(EncoderLayer):
  """The layer in `nn.scan`'s (carry, x) -> (carry, y) form."""

  def __call__(self, x, lengths=None, mask=None):
    return super().__call__(x, lengths, mask), None


REMAT_POLICIES = {
    "full": None,  # save nothing, recompute everything
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
