"""The train state: everything a step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from tl_jax.models.layers import FP8_HISTORY


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer steps taken; also the data position (batches consumed)
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data: masks and dropout are fold_in(rng, step)
  # Pruning masks (bool), a sub-tree of `params` holding the pruned matrices; None when not pruning.
  # Masked weights stay zero: their gradients are dropped and the masks re-applied after updates.
  masks: Any = None
  # Delayed fp8 scaling's amax histories (model.fp8_history), a tree shaped like `params` whose
  # leaves are the Dense layers' FP8_HISTORY entries; None without it. The model creates them as
  # parameters; the state holds them apart, so the optimizer, exports and counts never see them.
  fp8_history: Any = None


def init_state(model, tx: optax.GradientTransformation, seed: int, example_tokens,
               masked=None) -> TrainState:
  """A fresh state; parameters keep their logical-axis boxes (see parallel/sharding.py).
  `masked(params)`, where given, returns the sub-tree of parameters to keep pruning masks for."""
  init_rng, train_rng = jax.random.split(jax.random.key(seed))
  params, history = split_leaves(
      model.init({"params": init_rng}, example_tokens, deterministic=True)["params"], FP8_HISTORY)
  masks = None
  if masked is not None:  # all ones (nothing pruned yet), boxed like the parameters they mask
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.bool_), masked(params))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(train_rng), masks=masks, fp8_history=history)


def split_leaves(tree, name: str):
  """(`tree` without the entries called `name`, a tree of just those); None for the second where
  there are none."""
  if not isinstance(tree, dict):
    return tree, None
  rest, picked = {}, {}
  for key, value in tree.items():
    if key == name:
      picked[key] = value
      continue
    rest[key], sub = split_leaves(value, name)
    if sub is not None:
      picked[key] = sub
  return rest, picked or None


def merge_leaves(tree, extra):
  """The inverse of split_leaves: `tree` with the entries of `extra` (or None) put back."""
  if extra is None:
    return tree
  return {**tree, **{k: merge_leaves(tree[k], v) if k in tree else v for k, v in extra.items()}}


def mask_tree(tree, masks):
  """`tree` with every leaf that `masks` (a sub-tree) covers multiplied by its mask."""
  if masks is None:
    return tree
  if isinstance(masks, dict):
    return {k: mask_tree(v, masks[k]) if k in masks else v for k, v in tree.items()}
  return jnp.where(masks, tree, jnp.zeros((), tree.dtype))  # +0.0, as exports decode to
