"""The device mesh named by the config, checked against the devices present."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

from tl_jax.config import Config, d_ff
from tl_jax.errors import UserError

AXES = ("data", "fsdp", "tensor")


def mesh_shape(config: Config, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor), with a -1 entry filled from `num_devices`."""
  p = config.parallel
  sizes = [p.data, p.fsdp, p.tensor]
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise UserError(f"the mesh's fixed axes ({'x'.join(map(str, sizes))}) do not divide the "
                      f"{num_devices} devices; choose parallel sizes whose product divides them.")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise UserError(f"the mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
                    f"{math.prod(sizes)} devices but {num_devices} are present; set parallel sizes "
                    "whose product is the device count (or -1 on one axis to fill it).")
  return tuple(sizes)


def check_divisibility(config: Config, shape: tuple[int, int, int]) -> None:
  """The model and batch must split evenly over the mesh; say so before compiling."""
  data, fsdp, tensor = shape
  m, t = config.model, config.train
  micro = t.batch_size // t.grad_accum
  checks = [
      (micro % (data * fsdp), f"the micro-batch of {micro} sequences (train.batch_size / "
       f"train.grad_accum) does not split over data x fsdp = {data * fsdp} devices"),
      (config.eval.batch_size % (data * fsdp), f"eval.batch_size={config.eval.batch_size} does not "
       f"split over data x fsdp = {data * fsdp} devices"),
      (m.d_model % fsdp, f"model.d_model={m.d_model} does not split over fsdp={fsdp}"),
      (m.num_heads % tensor, f"model.num_heads={m.num_heads} does not split over tensor={tensor}"),
      (d_ff(m) % tensor, f"the FFN width {d_ff(m)} does not split over tensor={tensor}"),
  ]
  for bad, what in checks:
    if bad:
      raise UserError(f"{what}; change the batch or model size or the parallel.* mesh sizes.")


def make_mesh(config: Config, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(config, len(devices))
  check_divisibility(config, shape)
  # Classic jit-with-shardings style needs Auto axes (jax.make_mesh now defaults to Explicit).
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # odd device counts on CPU: a plain reshape is fine there
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))
