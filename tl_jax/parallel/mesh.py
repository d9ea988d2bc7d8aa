"""The device mesh named by the config, checked against the devices present."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

from tl_jax.config import Config, ParallelConfig, d_ff
from tl_jax.errors import UserError

AXES = ("data", "fsdp", "tensor")


def preset_sizes(p: ParallelConfig) -> list[int]:
  """(data, fsdp, tensor) with at most one -1, from the preset or the explicit sizes.

  Under FSDP presets the data axis holds only the dcn_data slices: FSDP gathers parameters at
  every layer, which wants the fast network inside a slice, while across slices only gradients
  travel once a step.
  """
  return {"": [p.data, p.fsdp, p.tensor],
          "data_parallel": [-1, 1, 1],
          "fsdp": [p.dcn_data, -1, 1],
          "fsdp_tensor": [p.dcn_data, -1, p.tensor]}[p.preset]


def mesh_shape(config: Config, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor), with a -1 entry filled from `num_devices`."""
  sizes = preset_sizes(config.parallel)
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


def granules(devices) -> list[list]:
  """The devices grouped by what the slow network joins: TPU slices where there are several,
  else processes (hosts), in index order."""
  slices = {getattr(d, "slice_index", 0) for d in devices}
  key = (lambda d: d.slice_index) if len(slices) > 1 else (lambda d: d.process_index)
  groups: dict[int, list] = {}
  for d in devices:
    groups.setdefault(key(d), []).append(d)
  return [groups[k] for k in sorted(groups)]


def check_hosts(config: Config, shape: tuple[int, int, int], devices) -> None:
  """Several hosts: each feeds its own rows of the batch, and dcn_data matches the slices."""
  data, _, tensor = shape
  dcn = config.parallel.dcn_data
  groups = granules(devices)
  processes = sorted({d.process_index for d in devices})
  per_process = len(devices) // len(processes)
  if len(processes) > 1 and per_process % tensor:
    # A tensor group across hosts would give two processes the same batch rows to feed.
    raise UserError(f"parallel.tensor={tensor} spans hosts ({per_process} devices each); keep tensor "
                    f"parallelism within a host: choose a parallel.tensor that divides {per_process}.")
  if dcn > 1 and len(groups) != dcn:
    raise UserError(f"parallel.dcn_data={dcn} needs the devices to come in {dcn} slices (or hosts), "
                    f"but they come in {len(groups)}; set parallel.dcn_data={len(groups)} or 1.")
  if dcn > 1 and len({len(g) for g in groups}) > 1:
    raise UserError(f"the {dcn} slices (or hosts) hold different numbers of devices "
                    f"({', '.join(str(len(g)) for g in groups)}); give every host the same devices.")
  if dcn > 1 and data % dcn:
    raise UserError(f"the data axis of {data} does not split over parallel.dcn_data={dcn} slices; make "
                    "the data size a multiple of parallel.dcn_data.")


def device_grid(shape: tuple[int, int, int], dcn: int, devices) -> np.ndarray:
  """Devices laid out as `shape`; with dcn > 1, data index blocks of whole slices (or hosts)."""
  from jax.experimental import mesh_utils
  if dcn > 1:
    inner = (shape[0] // dcn,) + tuple(shape[1:])
    by_process = len({getattr(d, "slice_index", 0) for d in devices}) == 1
    return mesh_utils.create_hybrid_device_mesh(inner, (dcn, 1, 1), devices,
                                                 process_is_granule=by_process)
  try:
    return mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # odd device counts on CPU: a plain reshape is fine there
    return np.asarray(devices).reshape(shape)


def make_mesh(config: Config, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(config, len(devices))
  check_divisibility(config, shape)
  check_hosts(config, shape, devices)
  grid = device_grid(shape, config.parallel.dcn_data, devices)
  # Classic jit-with-shardings style needs Auto axes (jax.make_mesh now defaults to Explicit).
  return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))
