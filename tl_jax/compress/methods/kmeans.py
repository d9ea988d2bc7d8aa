"""K-means (weight-sharing) quantization: 2^b shared values per matrix, fitted by 1-D Lloyd
iterations from a linear initialisation (Han et al., 2016; compress/quantize.py)."""

from __future__ import annotations

import numpy as np

from tl_jax.compress import export, memory
from tl_jax.compress import quantize as quant_lib
from tl_jax.compress.methods.base import Quantizer
from tl_jax.config import QuantConfig


class KMeans(Quantizer):
  name = "kmeans"

  def static_key(self, quant: QuantConfig) -> tuple:
    return (self.name, quant.kmeans_iters)

  def label(self, quant: QuantConfig) -> str:
    return f"{self.name}{quant.bits}b"

  def encode(self, w3, bits, quant: QuantConfig, mask3=None, hessian=None) -> dict:
    codes, codebook = quant_lib.kmeans_codes(w3, bits, iters=quant.kmeans_iters, mask=mask3)
    return {"codes": codes.astype(np.uint8), "codebook": codebook}

  def decode(self, part: dict):
    return quant_lib.kmeans_dequantize(part["codes"].astype(np.int32), part["codebook"])

  def storage(self, name: str, layout, part: dict, bits: int, quant: QuantConfig, nnz: int):
    s, i, o = layout.view
    return memory.TensorStorage(name, layout.shape, layout.size, nnz, rows=s * o, row_length=i,
                                bits=bits, codebook_size=s * 2 ** bits)

  def export(self, part: dict, bits: int, quant: QuantConfig, mask):
    # The codebook has a slot for every width up to 8 bits; only 2^bits of them are used.
    return export.encode_tensor(codes=part["codes"], mask=mask, bits=bits,
                                codebook=np.asarray(part["codebook"])[:, :2 ** bits])
