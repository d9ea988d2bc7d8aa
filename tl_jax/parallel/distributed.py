"""Multi-host start: whether and how to call `jax.distributed.initialize`, and agreement between
processes once they run.

JAX runs a multi-host job as one process per host (or per GPU), each driving its local devices
through the same program (multi-controller SPMD). `initialize()` joins the job before any
other jax call. Where it looks, in order (`plan` reads only the environment):

  TL_JAX_DISTRIBUTED=off         never join a job (one process, even inside a SLURM allocation)
  TL_JAX_COORDINATOR=HOST:PORT   explicit: with TL_JAX_NUM_PROCESSES and TL_JAX_PROCESS_ID
    (or JAX_COORDINATOR_ADDRESS)   (e.g. several processes started by hand or by a launcher)
  SLURM / Open MPI, >1 task      jax detects coordinator, count and rank itself (`srun`, `mpirun`)
  Cloud TPU VM                   jax detects the slice's workers (and slices) itself
  TL_JAX_DISTRIBUTED=on          join through jax's own detection even where the rules above
                                 see one process (e.g. a cluster jax knows and tl_jax does not)
  otherwise                      one process (one CPU, one GPU host)

Per-process decisions that steer the training loop (stop, checkpoint, evaluate) must agree,
or the processes would enter different collectives and hang: `agree` makes them agree.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from tl_jax.errors import UserError

MODES = ("auto", "on", "off")
EXPLICIT = ("TL_JAX_COORDINATOR", "TL_JAX_NUM_PROCESSES", "TL_JAX_PROCESS_ID")
SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process starts: `how` is single | explicit | slurm | openmpi | cloud_tpu | jax."""
  how: str
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  @property
  def joins(self) -> bool:
    return self.how != "single"


def _int(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ[name])
  except ValueError:
    raise UserError(f"{name}={environ[name]!r} is not an integer; set it to a whole number.") from None


def _explicit(environ: Mapping[str, str]) -> Plan:
  coordinator = environ.get("TL_JAX_COORDINATOR") or environ.get("JAX_COORDINATOR_ADDRESS")
  missing = [n for n in EXPLICIT if not (environ.get(n) or (n == "TL_JAX_COORDINATOR" and coordinator))]
  if missing:
    raise UserError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set while other "
                    "multi-process variables are; set all of TL_JAX_COORDINATOR=HOST:PORT, "
                    "TL_JAX_NUM_PROCESSES and TL_JAX_PROCESS_ID on every process, or none.")
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise UserError(f"the coordinator address {coordinator!r} is not HOST:PORT; give process 0's "
                    "host and a free port, e.g. TL_JAX_COORDINATOR=10.0.0.2:12345.")
  count, index = _int(environ, "TL_JAX_NUM_PROCESSES"), _int(environ, "TL_JAX_PROCESS_ID")
  if count < 1:
    raise UserError(f"TL_JAX_NUM_PROCESSES={count} must be at least 1; set it to the number of "
                    "processes in the job.")
  if not 0 <= index < count:
    raise UserError(f"TL_JAX_PROCESS_ID={index} is outside 0..{count - 1} for TL_JAX_NUM_PROCESSES="
                    f"{count}; number the processes 0 to {count - 1}.")
  return Plan("explicit", coordinator, count, index)


def _tasks(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ.get(name, "1"))
  except ValueError:
    return 1


def plan(environ: Mapping[str, str] | None = None, on_cloud_tpu: bool = False) -> Plan:
  """How this process joins a job, from the environment alone (no jax call)."""
  environ = os.environ if environ is None else environ
  mode = environ.get("TL_JAX_DISTRIBUTED", "auto").strip().lower() or "auto"
  if mode not in MODES:
    raise UserError(f"TL_JAX_DISTRIBUTED={mode!r} is not one of {', '.join(MODES)}; use auto (the "
                    "default), on or off.")
  if mode == "off":
    return Plan("single")
  if any(environ.get(n) for n in EXPLICIT):
    return _explicit(environ)
  # SLURM: the variables jax's detector reads, which `srun` sets for each task of a step.
  if all(n in environ for n in SLURM) and _tasks(environ, "SLURM_NTASKS") > 1:
    return Plan("slurm")
  if "OMPI_MCA_orte_hnp_uri" in environ and _tasks(environ, "OMPI_COMM_WORLD_SIZE") > 1:
    return Plan("openmpi")
  if on_cloud_tpu:
    return Plan("cloud_tpu")
  if mode == "on":
    return Plan("jax")
  return Plan("single")


def _on_cloud_tpu() -> bool:
  """Whether `import jax` found TPU chips and libtpu (it sets this flag, reading no network)."""
  try:
    from jax._src import cloud_tpu_init
    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
  except (ImportError, AttributeError):
    return False


def initialize(environ: Mapping[str, str] | None = None) -> Plan:
  """Joins the multi-process job the environment describes, if any; call before any other jax
  call (jax refuses once a backend is up). Returns the plan it followed."""
  import jax
  the_plan = plan(environ, _on_cloud_tpu())
  if not the_plan.joins or jax.distributed.is_initialized():
    return the_plan
  # CPU processes need a cross-process collective library; gloo ships with jaxlib.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    if the_plan.how == "explicit":
      jax.distributed.initialize(coordinator_address=the_plan.coordinator,
                                 num_processes=the_plan.num_processes, process_id=the_plan.process_id)
    else:  # jax's own cluster detection (SLURM, Open MPI, Cloud TPU metadata, ...)
      jax.distributed.initialize()
  except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    where = f" at {the_plan.coordinator}" if the_plan.coordinator else f" ({the_plan.how})"
    raise UserError(f"could not join the multi-process job{where}: {detail}; check that every "
                    "process starts with the same coordinator and process count and that process 0 "
                    "is reachable, or set TL_JAX_DISTRIBUTED=off to run one process.") from None
  if jax.process_index() == 0:
    print(f"multi-host: {jax.process_count()} processes ({the_plan.how}), {jax.device_count()} "
          f"devices, {jax.local_device_count()} on this one", flush=True)
  return the_plan


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing to wait for with one)."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def agree(leader: Mapping[str, float], anyone: Mapping[str, bool]) -> dict:
  """Process 0's values of `leader` and, for `anyone`, whether any process says True; the same
  dict in every process.

  Clocks and signals differ from host to host (one host may see SIGTERM first), so decisions
  read from them are made once, here, by all processes together.
  """
  import jax
  import numpy as np
  if jax.process_count() == 1:
    return {**leader, **{k: bool(v) for k, v in anyone.items()}}
  from jax.experimental import multihost_utils
  row = np.array([float(v) for v in leader.values()] + [float(bool(v)) for v in anyone.values()],
                 np.float32)
  rows = np.asarray(multihost_utils.process_allgather(row))  # [processes, values]
  out = {k: float(rows[0, i]) for i, k in enumerate(leader)}
  out.update({k: bool(rows[:, len(leader) + i].any()) for i, k in enumerate(anyone)})
  return out
