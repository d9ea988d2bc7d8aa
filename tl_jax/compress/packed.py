"""A whole compressed model as packed arrays on disk, and back.

Each parameter that a grid point compressed is encoded from its parts (codes, scales
or codebook, mask; compress/apply.py) by its quantizer's `export` (pruned only: by
`export.encode_tensor`); every other parameter is stored as float32. `load_model`
decodes them into the float32 parameters the compressed model evaluates with, bit
for bit.
"""

from __future__ import annotations

import numpy as np

from tl_jax.compress import apply, export
from tl_jax.compress.layout import Layout
from tl_jax.compress.methods import quantizer
from tl_jax.config import QuantConfig


def encode_model(params: dict, parts: dict, layouts: dict[str, Layout], quant: QuantConfig):
  """({path: arrays}, {path: metadata}) of flat host `params` and the point's host `parts`."""
  arrays, metas = {}, {}
  for path, layout in sorted(layouts.items()):
    part = parts.get(path)
    if part is None:
      a, meta = export.encode_tensor(values=np.asarray(params[path]))
    elif "codes" not in part:  # pruned, float values
      a, meta = export.encode_tensor(values=part["values"], mask=part["mask"])
    else:
      a, meta = quantizer(quant.method).export(part, quant.bits, quant, part.get("mask"))
    meta["shape"] = list(layout.shape)
    arrays[path], metas[path] = a, {k: v for k, v in meta.items() if v is not None}
  return arrays, metas


def save_model(directory: str, params: dict, parts: dict, layouts: dict[str, Layout],
               quant: QuantConfig, info: dict) -> None:
  arrays, metas = encode_model(params, parts, layouts, quant)
  export.save(directory, apply.unflat(arrays), {"tensors": metas, **info})


def load_model(directory: str, layouts: dict[str, Layout]) -> dict:
  """Flat float32 parameters of an export written by `save_model`."""
  tree, meta = export.load(directory)
  arrays = apply.flat(tree)
  params = {}
  for path, tensor_meta in meta["tensors"].items():
    own = {k[len(path) + 1:]: v for k, v in arrays.items() if k.startswith(path + "/")}
    w = export.decode_tensor(own, tensor_meta)
    as_stored = tensor_meta["method"] == "none" and tensor_meta["encoding"] == "dense"
    params[path] = w if as_stored else layouts[path].from_view(w)
  return params
