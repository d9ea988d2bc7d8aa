"""Uniform quantization, round to nearest: symmetric (qwix's absmax grid; 1 bit binarizes to
+-mean|w|) or asymmetric (min/max with a zero point), one scale per tensor, output channel or
group of input rows (compress/quantize.py holds the arithmetic)."""

from __future__ import annotations

import numpy as np

from tl_jax.compress import export, memory
from tl_jax.compress import quantize as quant_lib
from tl_jax.compress.methods.base import Quantizer
from tl_jax.config import QuantConfig
from tl_jax.errors import UserError


class Uniform(Quantizer):
  name = "uniform"

  def static_key(self, quant: QuantConfig) -> tuple:
    return (self.name, quant.symmetric, quant.granularity, quant.group_size)

  def label(self, quant: QuantConfig) -> str:
    kind = "sym" if quant.symmetric else "asym"
    granularity = f"group{quant.group_size}" if quant.granularity == "group" else quant.granularity
    return f"{self.name}{quant.bits}b-{kind}-{granularity}"

  def check(self, path: str, layout, quant: QuantConfig) -> None:
    rows = layout.view[1]
    if quant.granularity == "group" and rows % quant.group_size:
      raise UserError(f"group_size={quant.group_size} does not divide the {rows} input features "
                      f"of {path}; choose a divisor, or granularity=channel.")

  def encode(self, w3, bits, quant: QuantConfig, mask3=None, hessian=None) -> dict:
    codes, scale, zero = quant_lib.uniform_codes(
        w3, bits, symmetric=quant.symmetric, granularity=quant.granularity,
        group_size=quant.group_size, mask=mask3)
    return {"codes": codes.astype(np.uint8), "scale": scale, "zero": zero}

  def decode(self, part: dict):
    return quant_lib.uniform_dequantize(part["codes"], part["scale"], part["zero"])

  def storage(self, name: str, layout, part: dict, bits: int, quant: QuantConfig, nnz: int):
    s, i, o = layout.view
    return memory.TensorStorage(name, layout.shape, layout.size, nnz, rows=s * o, row_length=i,
                                bits=bits, num_scales=int(np.prod(part["scale"].shape)),
                                zero_points=not quant.symmetric)

  def export(self, part: dict, bits: int, quant: QuantConfig, mask):
    zero = None if quant.symmetric else np.asarray(part["zero"]).astype(np.uint8)
    return export.encode_tensor(codes=part["codes"], mask=mask, bits=bits, symmetric=quant.symmetric,
                                scale=part["scale"], zero=zero)
