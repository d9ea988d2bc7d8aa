"""Logical-axis -> mesh-axis rule tables (T5X/MaxText style).

Model code names axes (`batch`, `embed`, `heads`, ...); these tables say which
mesh axis (`data`, `fsdp`, `tensor`) shards each. A logical axis may list
several candidates: flax takes the first mesh axis not already used by another
axis of the same array, so `embed` shards parameters over `fsdp` but stays whole
in activations, whose `batch` already took `fsdp`. Mesh axes of size 1 shard
nothing, so one table serves a single device, data parallel, FSDP and tensor
parallel alike; the separate tables are there to be read and recombined.
"""

# Batch over every data-like axis: replicas (`data`) and parameter shards (`fsdp`).
DATA_PARALLEL = (
    ("batch", ("data", "fsdp")),
)

# ZeRO-3 / FSDP: each parameter's model-width axis is split over `fsdp`.
FSDP = (
    ("embed", "fsdp"),
)

# Megatron tensor parallelism: heads, FFN hidden units and the vocabulary split over `tensor`.
TENSOR = (
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)

# Axes that are never split.
REPLICATED = (
    ("length", None),
    ("kv", None),
    ("position", None),
    ("types", None),  # token-type (segment) embedding rows
    ("classes", None),  # classification labels
    ("embed_out", None),
    ("layers", None),
    ("embed", None),
)

TABLES = {
    "default": DATA_PARALLEL + FSDP + TENSOR + REPLICATED,
    # Keep parameters whole even on an fsdp axis: plain data parallel over data x fsdp.
    "data_parallel": DATA_PARALLEL + TENSOR + REPLICATED,
}


def rules_for(name: str):
  from tl_jax.errors import UserError
  if name not in TABLES:
    raise UserError(f"parallel.rules={name!r} is not a rule table; choose one of {', '.join(TABLES)}.")
  return TABLES[name]
