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


def init_state(model, tx: optax.GradientTransformation, seed: int, example_tokens) -> TrainState:
  """A fresh state; parameters keep their logical-axis boxes (see parallel/sharding.py)."""
  init_rng, train_rng = jax.random.split(jax.random.key(seed))
  params = model.init({"params": init_rng}, example_tokens, deterministic=True)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(train_rng))
