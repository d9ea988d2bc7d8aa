"""Model FLOPs per token and the bf16 peak of the device, for MFU.

The convention of the peer benchmarks (`shared/bench/README.md`), so tl_jax's
MFU and the peers' compare: training FLOPs per token = 6 x dense weights
touched per token (including the vocabulary projection, where it is computed)
+ 12 x layers x seq_len x d_model for attention.
"""

from __future__ import annotations

import jax

from tl_jax.config import ModelConfig, d_ff

# Dense bf16 peak TFLOP/s by device kind (vendor figures, without sparsity).
# Matched by substring of `jax.devices()[0].device_kind`, first match wins.
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("TPU v6", 918.0),
    ("TPU v5p", 459.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v4", 275.0),
    ("TPU v3", 123.0),
)


def encoder_flops_per_token(model: ModelConfig, seq_len: int) -> float:
  d, f, layers = model.d_model, d_ff(model), model.num_layers
  return 6.0 * layers * (4 * d * d + 2 * d * f) + 12.0 * layers * seq_len * d


def mlm_flops_per_token(model: ModelConfig, vocab_size: int, seq_len: int,
                        predictions: int = 0) -> float:
  """`predictions` > 0: the LM head (dense + tied decoder) runs at that many positions per row
  only, and only that work is counted."""
  d = model.d_model
  head = 6.0 * (d * d + d * vocab_size)
  if predictions:
    head *= predictions / seq_len
  return encoder_flops_per_token(model, seq_len) + head


def device_peak_flops(override_tflops: float = 0.0) -> float | None:
  """Peak FLOP/s of one device, or None where unknown (e.g. CPU: MFU is then null)."""
  if override_tflops > 0:
    return override_tflops * 1e12
  kind = jax.devices()[0].device_kind
  for key, tflops in PEAK_TFLOPS:
    if key.lower() in kind.lower():
      return tflops * 1e12
  return None
