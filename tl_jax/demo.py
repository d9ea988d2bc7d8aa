"""`tl-jax demo --workdir=DIR`: the whole study, small enough for a laptop CPU.

Runs the sweep `configs/sweeps/demo.py` under DIR: three model sizes pretrained on the
synthetic corpus for the same training seconds, each finetuned on the synthetic
sentiment task and compressed over a small grid. Then it writes the report
(`DIR/report/report.md` and its figures). Re-running it skips what is done and resumes
what was interrupted.
"""

from __future__ import annotations

import argparse
import os
import time

from tl_jax import report, sweep
from tl_jax.errors import UserError

DEMO_SWEEP = os.path.join("configs", "sweeps", "demo.py")


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="tl-jax demo", description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="where the runs and the report go")
  args = parser.parse_args(argv)
  if not os.path.exists(DEMO_SWEEP):
    raise UserError(f"tl-jax demo reads {DEMO_SWEEP} from the current directory; run it from "
                    "the repository root.")
  start = time.perf_counter()
  status = sweep.run(sweep.load_sweep(DEMO_SWEEP), args.workdir)
  if status:
    return status
  out = os.path.join(args.workdir, "report")
  status = report.main([args.workdir, "--out", out])
  minutes, seconds = divmod(round(time.perf_counter() - start), 60)
  print(f"demo finished in {minutes}m{seconds:02d}s: {os.path.join(out, 'report.md')}", flush=True)
  return status
