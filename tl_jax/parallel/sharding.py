"""Shardings of a train state derived from its abstract shape, and global batches."""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def logical_state_shardings(init_fn, mesh: Mesh, rules, *args):
  """(abstract boxed state, NamedSharding tree) of `init_fn(*args)`, without allocating it.

  `init_fn` returns a state whose parameters are still boxed with their logical
  names; the shardings tree has the structure of the unboxed state.
  """
  abstract = jax.eval_shape(init_fn, *args)
  specs = nn.get_partition_spec(abstract)
  return abstract, nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
  """Batch axis as the rules place `batch`; the other axes whole."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(host_batch, sharding):
  """Global arrays from this process's rows (every process passes its own slice).

  `host_batch` is an array or a tree of them; `sharding` a sharding or a matching tree.
  """
  def one(x, s):
    return jax.make_array_from_process_local_data(s, x, (x.shape[0] * jax.process_count(),) + x.shape[1:])
  return jax.tree.map(one, host_batch, sharding)


def host_rows(batch):
  """This process's rows of a batch every process holds whole (e.g. a fixed eval batch)."""
  def rows(x):
    per_host = x.shape[0] // jax.process_count()
    return x[jax.process_index() * per_host:(jax.process_index() + 1) * per_host]
  return jax.tree.map(rows, batch)


def abstract_batch(host_batch, sharding):
  """Shapes of the global batch built from `host_batch`, for ahead-of-time compilation."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct((x.shape[0] * jax.process_count(),) + x.shape[1:], x.dtype,
                                        sharding=s), host_batch, sharding)
