"""Compressing a parameter tree: prune, then quantize, each target matrix in its [S, I, O] view.

Pure functions of (parameters, layouts, settings, bits, sparsity). The settings
(method, scope, granularity, targets) are static; `bits` and `sparsity` are traced,
so one compiled transform serves a whole grid of bit widths and sparsities.
Parameters travel as flat dicts keyed by path (`encoder/layers/mlp/wi/kernel`).
"""

from __future__ import annotations

import flax.traverse_util
import jax
import jax.numpy as jnp

from tl_jax.compress import prune as prune_lib
from tl_jax.compress import quantize as quant_lib
from tl_jax.compress.layout import Layout, parse_groups
from tl_jax.compress.methods import quantizer
from tl_jax.config import PruneConfig, QuantConfig
from tl_jax.errors import UserError


def flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def unflat(flat_tree: dict):
  return flax.traverse_util.unflatten_dict(flat_tree, sep="/")


def prune_targets(layouts: dict[str, Layout], prune: PruneConfig) -> list[str]:
  if prune.method == "none":
    return []
  groups = parse_groups(prune.targets, "prune.targets")
  return sorted(p for p, l in layouts.items() if l.group in groups)


def quant_targets(layouts: dict[str, Layout], quant: QuantConfig) -> list[str]:
  if quant.method == "none":
    return []
  groups = parse_groups(quant.targets, "quant.targets")
  return sorted(p for p, l in layouts.items() if l.group in groups)


def check_shapes(layouts: dict[str, Layout], quant: QuantConfig, prune: PruneConfig) -> None:
  """Shape conditions of the settings, as one sentence each, before anything compiles."""
  if prune.method == "nm":
    for path in prune_targets(layouts, prune):
      rows = layouts[path].view[1]
      if rows % prune.m:
        raise UserError(f"prune.m={prune.m} does not divide the {rows} input features of {path}; "
                        "choose m dividing it, or leave that group out of prune.targets.")
  if quant.method != "none":
    method = quantizer(quant.method)
    for path in quant_targets(layouts, quant):
      method.check(path, layouts[path], quant)


def masks_for(params: dict, layouts: dict[str, Layout], prune: PruneConfig, sparsity) -> dict:
  """{path: bool mask in the parameter's own shape} for the pruning targets."""
  paths = prune_targets(layouts, prune)
  views = [layouts[p].to_view(params[p]) for p in paths]
  if prune.method == "magnitude":
    masks = prune_lib.magnitude_masks(views, sparsity, scope=prune.scope)
  else:
    masks = [prune_lib.nm_mask(v, prune.n, prune.m) for v in views]
  return {p: layouts[p].from_view(m) for p, m in zip(paths, masks)}


def apply_masks(params: dict, masks: dict) -> dict:
  return {p: (jnp.where(masks[p], w, 0.0) if p in masks else w) for p, w in params.items()}


def dequantize(part: dict, quant: QuantConfig):
  """The float32 [S, I, O] view a quantized part stands for, pruned entries zero;
  export.decode_tensor computes the same, bit for bit."""
  w = quantizer(quant.method).decode(part)
  if "mask" in part:
    w = jnp.where(part["mask"], w, 0.0)
  return w


def quantize_view(w3, bits, quant: QuantConfig, mask3=None, hessian=None) -> dict:
  part = quantizer(quant.method).encode(w3, bits, quant, mask3, hessian)
  if mask3 is not None:
    part["mask"] = mask3
  return part


def compress(params: dict, layouts: dict[str, Layout], quant: QuantConfig, prune: PruneConfig,
             bits, sparsity, masks: dict | None = None, hessians: dict | None = None):
  """(compressed flat params, parts) for one point of a grid.

  `masks`, where given, are kept as they are (a model pruned while finetuning); otherwise
  `prune` computes them at `sparsity`. `hessians` ({path: [S, I, I]}) feed calibrated
  quantizers (GPTQ). `parts[path]` holds what export stores for each target: the mask and,
  where quantized, the method's codes with their scales or codebook (all [S, ...] views).
  Compressed parameters are float32, pruned and fake-quantized.
  """
  if masks is None:
    masks = masks_for(params, layouts, prune, sparsity) if prune.method != "none" else {}
  out, parts = apply_masks(params, masks), {}
  quantized = set(quant_targets(layouts, quant))
  for path in sorted(set(masks) | quantized):
    layout = layouts[path]
    mask3 = layout.to_view(masks[path]) if path in masks else None
    if path in quantized:
      part = quantize_view(layout.to_view(params[path]), bits, quant, mask3,
                           (hessians or {}).get(path))
      out[path] = layout.from_view(dequantize(part, quant))
    else:
      part = {"values": layout.to_view(out[path]), "mask": mask3}
    parts[path] = part
  return out, parts


def fake_quant_straight_through(params: dict, layouts: dict[str, Layout], quant: QuantConfig, bits,
                                masks: dict) -> dict:
  """Parameters whose target weights are fake-quantized in the forward pass and pass gradients
  straight through: quantization-aware training."""
  out = dict(params)
  for path in quant_targets(layouts, quant):
    layout = layouts[path]
    mask3 = layout.to_view(masks[path]) if path in masks else None
    part = quantize_view(layout.to_view(params[path]), bits, quant, mask3)
    quantized = layout.from_view(dequantize(part, quant))
    out[path] = quant_lib.straight_through(params[path], quantized)
  return out


def relative_errors(original: dict, compressed: dict, layouts: dict[str, Layout],
                    paths: list[str]) -> dict:
  """{path: [S] relative Frobenius error per stacked matrix}."""
  errors = {}
  for path in paths:
    layout = layouts[path]
    w, c = layout.to_view(original[path]), layout.to_view(compressed[path])
    norm = jnp.sqrt(jnp.sum(w * w, axis=(1, 2)))
    errors[path] = jnp.sqrt(jnp.sum((w - c) ** 2, axis=(1, 2))) / jnp.maximum(norm, 1e-30)
  return errors
