"""The Hessians X^T X of every dense layer's inputs over calibration batches (for GPTQ).

A task hands over a forward pass `forward(params, batch)` and batches of its own training
data; this module intercepts every `Dense` call of the model (tl_jax/models/layers.py) during
that pass and sums x^T x over all positions of the layer's input x, flattened to
[positions, I] where I is what the kernel contracts (the I of its [S, I, O] view). Each
distinct batch shape compiles once.

Scanned layers (model.scan_layers) run their Dense calls inside `nn.scan`, where the inputs
of one layer are not visible outside the loop: such models are refused with one sentence.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.errors import UserError
from tl_jax.models.layers import Dense


def check_unscanned(layouts: dict, paths) -> None:
  stacked = [p for p in paths if layouts[p].view[0] > 1]
  if stacked:
    raise UserError(f"calibrated quantization (GPTQ) needs the inputs of each layer, which a "
                    f"scanned model hides ({stacked[0]} is stacked); finetune or train with "
                    "model.scan_layers=false, or leave gptq out of quant_methods.")


def collect(forward, params, batches, layouts: dict, paths, positions=None) -> dict:
  """{kernel path: Hessian [S=1, I, I]} (float32) of the Dense kernels among `paths`, summed
  over `batches` and divided by the number of input positions counted.

  `positions(batch)`, where given, is a [B, S] 0/1 array of the positions that count (padding
  is 0); it applies to every input laid out as [B, S, ...] (an encoder's), and inputs of other
  shapes (a pooled classification head's [B, ...]) count whole.
  """
  wanted = set(paths)

  def hessians(params, batch, counted):
    found, counts = {}, {}

    def interceptor(next_fun, args, kwargs, context):
      module = context.module
      if isinstance(module, Dense) and context.method_name == "__call__":
        path = "/".join(module.path) + "/kernel"
        if path in wanted:
          x = args[0].astype(jnp.float32)
          lead = x.shape[:x.ndim - (len(module.axes) - len(module.features))]  # the positions
          if counted is not None and lead[:2] == counted.shape:
            w = counted.astype(jnp.float32).reshape(counted.shape + (1,) * (len(lead) - 2))
            w = jnp.broadcast_to(w, lead).reshape(-1)
          else:
            w = jnp.ones((x.size // layouts[path].view[1],), jnp.float32)
          x = x.reshape(-1, layouts[path].view[1])
          found[path] = found.get(path, 0.0) + (x * w[:, None]).T @ x
          counts[path] = counts.get(path, 0) + jnp.sum(w)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      forward(params, batch)
    return found, counts

  jitted = jax.jit(hessians)
  totals, counted = {}, {}
  for batch in batches:
    found, counts = jitted(params, batch, None if positions is None else positions(batch))
    for path, h in found.items():
      totals[path] = totals[path] + h if path in totals else h
      counted[path] = counted.get(path, 0.0) + float(counts[path])
  return {p: (h / max(counted[p], 1.0))[None] for p, h in totals.items()}
