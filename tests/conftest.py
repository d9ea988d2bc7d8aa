"""Test setup: 8 simulated CPU devices, a shared data cache, and the shared text data."""

import os
import pathlib

# Before jax is imported anywhere: sharding tests need a 2x4 mesh on one CPU.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
# The scaling-law fit's BLAS calls are small: OpenBLAS threads contending with XLA's for two
# cores made one test_report fit take 28 s instead of 2 s (2-core CI machine, 2026-12-02).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest

# The fixture that records faults and bad inputs for docs/RELIABILITY.md, and its hook.
from faults.record import pytest_runtest_makereport, reliability  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _token_cache(tmp_path_factory):
  """One tokenizer/token cache for the session, so runs after the first reuse it."""
  if "TL_JAX_CACHE" not in os.environ:
    os.environ["TL_JAX_CACHE"] = str(tmp_path_factory.mktemp("tl_jax_cache"))
  # The tl-jax commands the tests start run without the compilation cache it keeps by default:
  # the suite's workers share one TL_JAX_CACHE, and jax writes cache entries without a lock. The
  # tests that want a cache give it its own folder (faults/harness.py, test_cli_errors.py).
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "")


@pytest.fixture(scope="module")
def in_process_compile_cache(tmp_path_factory):
  """jax's persistent compilation cache, in a folder of the module's own, for the runs its tests
  make in this process (`pytestmark = pytest.mark.usefixtures("in_process_compile_cache")`): a
  run that repeats an earlier one's programs (a resumed session, the same model finetuned from
  other weights, a compression grid run again) loads them instead of compiling them again. A
  program that differs misses and compiles afresh, so nothing a test checks changes. The
  commands the tests start keep the suite's default (no cache, see _token_cache), and this
  process gets it back after the module."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache
  settings = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_persistent_cache_min_entry_size_bytes": 0}
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  try:
    yield settings["jax_compilation_cache_dir"]
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture
def shared_data():
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent: the real-text tests need the shared data folder "
                "beside the repo (../shared/data).")
  return SHARED_DATA


def pytest_collection_modifyitems(config, items):
  import jax
  if jax.default_backend() != "gpu":
    skip = pytest.mark.skip(reason="needs a CUDA GPU (runs on the device machine)")
    for item in items:
      if "gpu" in item.keywords:
        item.add_marker(skip)
