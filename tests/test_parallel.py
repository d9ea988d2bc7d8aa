"""Meshes and rules: shardings follow the rule tables; every mesh trains the same model."""

import dataclasses
import re

import jax
import numpy as np
import pytest

from tl_jax import config as config_lib
from tl_jax.errors import UserError
from tl_jax.parallel.mesh import check_hosts, device_grid, make_mesh, mesh_shape
from tl_jax import tasks
from tl_jax.train import metrics

MESHES = {
    "single": (1, 1, 1),
    "dp8": (8, 1, 1),
    "fsdp8": (1, 8, 1),
    "dp2_fsdp2_tp2": (2, 2, 2),
}


def tiny(mesh=(1, 1, 1), steps=24):
  c = config_lib.load_preset("configs/mlm.py:tiny")
  c.parallel.data, c.parallel.fsdp, c.parallel.tensor = mesh
  c.data.max_train_tokens = 200_000
  c.train.max_steps = steps
  c.train.log_every = 8
  c.eval.every_steps = steps
  c.eval.num_batches = 2
  c.eval.batch_size = 16  # unlike the train batch: eval compiles and feeds its own shape
  c.checkpoint.every_steps = 1000
  return c


def devices_for(mesh):
  """Simulated CPU devices, also on a GPU machine (conftest.py asks for 8)."""
  n = int(np.prod(mesh))
  assert len(jax.devices("cpu")) >= n, "tests run with 8 simulated CPU devices (see conftest.py)"
  return jax.devices("cpu")[:n]


@pytest.mark.parametrize("name", ["dp8", "fsdp8", "dp2_fsdp2_tp2"])
def test_parameter_shardings_follow_the_rules(name, tmp_path):
  mesh = MESHES[name]
  setup = tasks.setup(tiny(mesh), str(tmp_path), devices_for(mesh))
  params = setup.program.state_shardings.params
  data, fsdp, tensor = mesh

  def spec(sharding):
    return tuple(sharding.spec) + (None,) * 4

  def axis(name, size):  # a mesh axis of size 1 is dropped from the spec by nothing; compare by size
    return name if size > 1 else None

  embed = spec(params["token_embed"]["embedding"])  # (vocab, embed)
  query = spec(params["encoder"]["layer_0"]["attention"]["query"]["kernel"])  # (embed, heads, kv)
  wo = spec(params["encoder"]["layer_0"]["mlp"]["wo"]["kernel"])  # (mlp, embed)
  ln = spec(params["encoder"]["ln_embed"]["scale"])  # (embed,)
  mesh_obj = setup.mesh
  def placed(s):  # mesh axes that actually split the array
    return tuple(a if a is not None and mesh_obj.shape[a] > 1 else None for a in s[:3])
  assert placed(embed)[:2] == (axis("tensor", tensor), axis("fsdp", fsdp))
  assert placed(query) == (axis("fsdp", fsdp), axis("tensor", tensor), None)
  assert placed(wo)[:2] == (axis("tensor", tensor), axis("fsdp", fsdp))
  assert placed(ln)[:1] == (axis("fsdp", fsdp),)
  # Optimizer moments are sharded like their parameters (ZeRO-3 under fsdp).
  moments = [s for path, s in jax.tree_util.tree_leaves_with_path(setup.program.state_shardings.opt_state)
             if "token_embed" in jax.tree_util.keystr(path)]
  assert len(moments) == 2  # Adam's mu and nu
  assert all(m.spec == params["token_embed"]["embedding"].spec for m in moments)
  # The batch splits over data x fsdp.
  assert setup.program.batch_sharding.spec[0] == ("data", "fsdp")


def test_meshes_agree_on_the_losses(tmp_path):
  curves = {}
  for name, mesh in MESHES.items():
    workdir = str(tmp_path / name)
    assert tasks.run(tiny(mesh), workdir, devices_for(mesh)) == 0
    lines = metrics.read(workdir)
    curves[name] = ([l["loss"] for l in lines if "loss" in l], [l["eval_loss"] for l in lines if "eval_loss" in l])
  reference = curves["single"]
  assert reference[0][-1] < reference[1][0], "the run must learn for the comparison to mean anything"
  for name, (train, evals) in curves.items():
    np.testing.assert_allclose(train, reference[0], rtol=2e-4, err_msg=name)
    np.testing.assert_allclose(evals, reference[1], rtol=2e-4, err_msg=name)


@pytest.mark.parametrize("mesh,fragment", [
    ((16, 1, 1), "needs 16 devices but 8 are present"),
    ((3, -1, 1), "do not divide the 8 devices"),
    ((1, 1, 8), "model.num_heads=2 does not split over tensor=8"),
])
def test_bad_meshes_are_user_errors(mesh, fragment):
  with pytest.raises(UserError, match=fragment):
    make_mesh(tiny(mesh), jax.devices("cpu"))


def with_parallel(**fields):
  c = tiny()
  c.parallel.data, c.parallel.fsdp, c.parallel.tensor = -1, 1, 1
  for name, value in fields.items():
    setattr(c.parallel, name, value)
  config_lib.validate(c)
  return c


@pytest.mark.parametrize("fields,shape", [
    ({"preset": "data_parallel"}, (8, 1, 1)),
    ({"preset": "fsdp"}, (1, 8, 1)),
    ({"preset": "fsdp_tensor", "tensor": 2}, (1, 4, 2)),
    ({"preset": "fsdp", "dcn_data": 2}, (2, 4, 1)),
    ({"preset": "fsdp_tensor", "tensor": 2, "dcn_data": 2}, (2, 2, 2)),
    ({"data": 2, "fsdp": 4}, (2, 4, 1)),  # no preset: the sizes as given
])
def test_mesh_presets_fill_the_devices(fields, shape):
  assert mesh_shape(with_parallel(**fields), 8) == shape


@pytest.mark.parametrize("fields,fragment", [
    ({"preset": "zero"}, "parallel.preset='zero' is not one of"),
    ({"preset": "fsdp", "fsdp": 4}, "sets parallel.data and parallel.fsdp itself"),
    ({"preset": "fsdp", "tensor": 2}, "use parallel.preset=fsdp_tensor"),
    ({"preset": "fsdp_tensor"}, "needs parallel.tensor > 1"),
    ({"dcn_data": 0}, "parallel.dcn_data=0 must be at least 1"),
    ({"data": 3, "fsdp": 1, "dcn_data": 2}, "does not split over parallel.dcn_data=2"),
])
def test_bad_parallel_configs_are_user_errors(fields, fragment):
  with pytest.raises(UserError, match=re.escape(fragment)):
    with_parallel(**fields)


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """What mesh building reads of a device; lets one process lay out a multi-host mesh."""
  id: int
  process_index: int
  platform: str = "cpu"
  device_kind: str = "cpu"


def hosts(count: int, per_host: int) -> list[FakeDevice]:
  return [FakeDevice(h * per_host + i, h) for h in range(count) for i in range(per_host)]


def test_dcn_data_blocks_the_data_axis_by_host():
  devices = hosts(2, 4)
  c = with_parallel(preset="fsdp", dcn_data=2)
  shape = mesh_shape(c, len(devices))
  check_hosts(c, shape, devices)
  grid = device_grid(shape, 2, devices)
  assert grid.shape == (2, 4, 1)
  # Each data index is one host: FSDP's per-layer gathers stay inside it, gradients cross hosts.
  assert [{d.process_index for d in grid[i].ravel()} for i in range(2)] == [{0}, {1}]


@pytest.mark.parametrize("fields,devices,fragment", [
    ({"preset": "fsdp", "dcn_data": 2}, hosts(1, 8), "come in 2 slices (or hosts), but they come in 1"),
    ({"preset": "fsdp", "dcn_data": 4}, hosts(2, 4), "come in 4 slices (or hosts), but they come in 2"),
    ({"preset": "fsdp_tensor", "tensor": 8}, hosts(2, 4), "parallel.tensor=8 spans hosts (4 devices each)"),
])
def test_meshes_that_do_not_match_the_hosts_are_user_errors(fields, devices, fragment):
  c = with_parallel(**fields)
  c.model.num_heads, c.model.d_model = 8, 128
  with pytest.raises(UserError, match=re.escape(fragment)):
    check_hosts(c, mesh_shape(c, len(devices)), devices)


def test_dcn_data_on_one_process_is_refused_before_compiling():
  with pytest.raises(UserError, match=re.escape("parallel.dcn_data=2 needs the devices to come in 2")):
    make_mesh(with_parallel(preset="fsdp", dcn_data=2), jax.devices("cpu"))
