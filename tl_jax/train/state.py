"""The train state: everything a step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer steps taken; also the data position (batches consumed)
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data: masks and dropout are fold_in(rng, step)
  # Pruning masks (bool), a sub-tree of `params` holding the pruned matrices; None when not pruning.
  # Masked weights stay zero: their gradients are dropped and the masks re-applied after updates.
  masks: Any = None


def init_state(model, tx: optax.GradientTransformation, seed: int, example_tokens,
               masked=None) -> TrainState:
  """A fresh state; parameters keep their logical-axis boxes (see parallel/sharding.py).
  `masked(params)`, where given, returns the sub-tree of parameters to keep pruning masks for."""
  init_rng, train_rng = jax.random.split(jax.random.key(seed))
  params = model.init({"params": init_rng}, example_tokens, deterministic=True)["params"]
  masks = None
  if masked is not None:  # all ones (nothing pruned yet), boxed like the parameters they mask
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.bool_), masked(params))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(train_rng), masks=masks)


def mask_tree(tree, masks):
  """`tree` with every leaf that `masks` (a sub-tree) covers multiplied by its mask."""
  if masks is None:
    return tree
  if isinstance(masks, dict):
    return {k: mask_tree(v, masks[k]) if k in masks else v for k, v in tree.items()}
  return jnp.where(masks, tree, jnp.zeros((), tree.dtype))  # +0.0, as exports decode to
