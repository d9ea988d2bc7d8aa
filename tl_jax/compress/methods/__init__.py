"""Quantization methods, one file each, behind the protocol of `base.Quantizer`.

`QUANTIZERS` maps the names `quant.method` and a grid's `quant_methods` take to the method
objects; adding a method is one file here plus its entry below (and its test).
"""

from __future__ import annotations

from tl_jax.compress.methods.base import Quantizer
from tl_jax.compress.methods.gptq import GPTQ
from tl_jax.compress.methods.kmeans import KMeans
from tl_jax.compress.methods.uniform import Uniform

QUANTIZERS: dict[str, Quantizer] = {q.name: q for q in (Uniform(), KMeans(), GPTQ())}


def quantizer(name: str) -> Quantizer:
  return QUANTIZERS[name]
