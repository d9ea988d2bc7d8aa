"""Shared by the fault suite: a compilation cache for its subprocesses and one finished run."""

import pathlib
import shutil

import pytest

from faults.harness import LONG, SMALL, checkpoint_steps, cli_env, run, tl_jax


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("jax_compile_cache"))


@pytest.fixture(scope="session")
def env(compile_cache) -> dict:
  """One CPU device and a shared compilation cache: each restart costs seconds, not tens."""
  return cli_env(devices=1, compile_cache=compile_cache)


@pytest.fixture(scope="session")
def finished(tmp_path_factory, env) -> pathlib.Path:
  """A completed 20-step SMALL run with checkpoints 10 and 20 (read-only: copy it to change it)."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = run(tl_jax("pretrain", f"--workdir={workdir}", *SMALL, "--config.train.max_steps=20"), env)
  assert result.returncode == 0, result.stdout + result.stderr
  assert checkpoint_steps(workdir) == [10, 20]
  return workdir


@pytest.fixture
def copy_of_finished(finished, tmp_path) -> pathlib.Path:
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  return workdir


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, env) -> pathlib.Path:
  """The LONG run, start to end, with nothing done to it: what interrupted runs must reproduce."""
  workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
  result = run(tl_jax("pretrain", f"--workdir={workdir}", *LONG), env)
  assert result.returncode == 0, result.stdout + result.stderr
  return workdir
