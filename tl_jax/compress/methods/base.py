"""The protocol every quantization method follows.

A method chooses b-bit codes for each target weight in its [S, I, O] matrix view
(compress/layout.py) and says how they are stored. Everything else is shared: which weights are
targets, pruning before quantization, the compiled grid (bits are traced values, so a method's
`encode` must not turn them into shapes or Python branches), the memory count and the packed
export. A method is static for compilation only through `static_key`.

  name          the value of `quant.method` and of a grid's `quant_methods`
  calibrated    whether `encode` wants the Hessian X^T X of the layer's inputs (GPTQ);
                those come from the task's training batches (compress/hessians.py)
  static_key    the settings of `QuantConfig` the compiled transform depends on
  label         the point's name: `uniform4b-sym-channel`
  check         shape conditions of the settings, as a UserError, before anything compiles
  encode        (w3, bits, quant, mask3, hessian) -> part: uint8 `codes` plus the arrays that
                give them meaning (scales, zero points, a codebook); traced
  decode        part -> float32 [S, I, O] weights, pruned entries not yet zeroed; traced
  storage       the `memory.TensorStorage` of a part: what the export will write
  export        (host part, bits, quant, mask) -> (arrays, meta) through export.encode_tensor
"""

from __future__ import annotations

from typing import ClassVar

from tl_jax.config import QuantConfig


class Quantizer:
  name: ClassVar[str]
  calibrated: ClassVar[bool] = False

  def static_key(self, quant: QuantConfig) -> tuple:
    raise NotImplementedError

  def label(self, quant: QuantConfig) -> str:
    raise NotImplementedError

  def check(self, path: str, layout, quant: QuantConfig) -> None:
    """Raises UserError where `quant` cannot quantize this parameter."""

  def encode(self, w3, bits, quant: QuantConfig, mask3=None, hessian=None) -> dict:
    raise NotImplementedError

  def decode(self, part: dict):
    raise NotImplementedError

  def storage(self, name: str, layout, part: dict, bits: int, quant: QuantConfig, nnz: int):
    raise NotImplementedError

  def export(self, part: dict, bits: int, quant: QuantConfig, mask):
    raise NotImplementedError
