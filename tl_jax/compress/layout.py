"""Which parameters are weight matrices, which group they belong to, and their matrix view.

Quantizers and pruners see every weight as `[S, I, O]`: S stacked matrices (the
layers of a scanned stack, else 1), I the input features the matmul contracts,
O the output features. Per-channel scales are per O, N:M blocks run along I.
The view is read off the logical axis names every parameter already carries
(`tl_jax/models/layers.py`), so the model code knows nothing of compression:

  - a leading `layers` axis is the stack;
  - attention's output projection contracts `(heads, kv)`; every other kernel its
    first axis;
  - embedding tables (`vocab`/`position`/`types` x `embed`) are looked up by row, and
    the tied MLM decoder contracts `embed`: so I = embed and O = the rows.

Vectors (norm scales, biases) view as [S, n, 1]; they stay float unless a config asks.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import numpy as np

GROUPS = ("attention", "ffn", "embedding", "head", "norm", "bias")
_TABLE_ROWS = ("vocab", "position", "types")


@dataclasses.dataclass(frozen=True)
class Layout:
  path: str  # e.g. encoder/layers/attention/query/kernel
  group: str  # one of GROUPS
  shape: tuple[int, ...]
  perm: tuple[int, ...]  # transpose of the parameter that orders its axes (stack, in, out)
  view: tuple[int, int, int]  # (S, I, O)

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def layer_names(self) -> list[str]:
    """One name per stacked matrix (`encoder/layers/...[3]`), for per-layer reports."""
    if self.view[0] == 1:
      return [self.path]
    return [f"{self.path}[{i}]" for i in range(self.view[0])]

  def to_view(self, x):
    return x.transpose(self.perm).reshape(self.view)

  def from_view(self, x3):
    permuted = tuple(self.shape[a] for a in self.perm)
    return x3.reshape(permuted).transpose(np.argsort(self.perm))


def group_of(path: tuple[str, ...], names: tuple[str, ...]) -> str:
  if path[-1] in ("scale",) or any(p.startswith("ln") for p in path):
    return "norm"
  if path[-1] == "bias":
    return "bias"
  if any(n in _TABLE_ROWS for n in names) and path[-1] == "embedding":
    return "embedding"
  if any("attention" in p for p in path):
    return "attention"
  if "mlp" in path:
    return "ffn"
  return "head"  # classification head, and any other projection


def layout_of(path: tuple[str, ...], names: tuple[str | None, ...], shape: tuple[int, ...]) -> Layout:
  names = tuple(n or "" for n in names)
  stack = 1 if names and names[0] == "layers" else 0
  rest = list(range(stack, len(shape)))
  group = group_of(path, names)
  if group in ("norm", "bias") or len(rest) == 1:  # a vector (per layer)
    perm, n_in = tuple(range(len(shape))), len(rest)
    view_out = 1
  else:
    if names[stack] in _TABLE_ROWS:  # lookup table: rows are the output channels
      rest = rest[1:] + rest[:1]
      n_in = len(rest) - 1
    elif names[stack:stack + 2] == ("heads", "kv"):
      n_in = 2
    else:
      n_in = 1
    perm = tuple(range(stack)) + tuple(rest)
    view_out = math.prod(shape[a] for a in rest[n_in:])
  s = math.prod(shape[:stack])
  i = math.prod(shape[a] for a in rest[:n_in])
  return Layout("/".join(path), group, tuple(shape), perm, (s, i, view_out))


def layouts(boxed_params) -> dict:
  """A tree like the parameters with a Layout per leaf, from a tree whose leaves still carry their
  logical-axis boxes (an `init`/`eval_shape` result before unboxing)."""
  specs = nn.get_partition_spec(boxed_params)
  shapes = jax.tree.map(lambda x: tuple(x.shape), nn.unbox(boxed_params))

  def one(path, spec, shape):
    keys = tuple(str(getattr(k, "key", k)) for k in path)
    names = tuple(spec) if spec is not None else (None,) * len(shape)
    return layout_of(keys, names, shape)

  return jax.tree.map_with_path(one, specs, shapes,
                                is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def parse_groups(text: str, field: str) -> tuple[str, ...]:
  groups = tuple(g.strip() for g in text.split(",") if g.strip())
  unknown = [g for g in groups if g not in GROUPS]
  if unknown:
    from tl_jax.errors import UserError
    raise UserError(f"{field}={text!r} names unknown parameter groups {', '.join(unknown)}; "
                    f"choose from {', '.join(GROUPS)}.")
  return groups


def model_layouts(model, example) -> dict[str, Layout]:
  """{path: Layout} of every parameter of `model` (a linen module initialised with `example`,
  nothing allocated)."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), example, deterministic=True))
  return {l.path: l for l in jax.tree.leaves(layouts(boxed["params"]),
                                             is_leaf=lambda x: isinstance(x, Layout))}
