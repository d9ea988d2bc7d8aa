"""Writes docs/RELIABILITY.md from what the fault suite recorded (see record.py).

    python -m pytest tests/faults tests/test_cli_errors.py tests/test_preemption.py
    python -m tests.faults.table [--records=build/reliability.jsonl] [--out=docs/RELIABILITY.md]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import pathlib
import sys

from .record import RECORDS

REPO = pathlib.Path(__file__).resolve().parents[2]
# The order of the sections; an area not listed here follows them.
AREAS = ["SIGKILL and restart", "SIGTERM (pre-emption)", "SIGINT (Ctrl-C)", "One job per workdir",
         "Damaged checkpoints", "Non-finite loss",
         "Disk and permissions", "Bad input: configs", "Bad input: data files", "Bad input: tokenizers",
         "Bad input: checkpoints of another size", "Bad input: meshes"]

HEADER = """\
# Reliability: faults and bad inputs, tried on purpose

Every row below is a fault that the test suite injected or a bad input it gave, and what
tl_jax did, as the suite observed it (the messages are the ones the commands printed). It is
generated, not written: regenerate it after changing any of this with

    python -m pytest tests/faults tests/test_cli_errors.py tests/test_preemption.py
    python -m tests.faults.table

(`tests/faults` runs alone too; the table then holds only its rows.) Temporary paths read `$TMP`.

How the faults are made: SIGKILL, SIGTERM and SIGINT are real signals sent to `tl-jax pretrain` at moments
the suite watches for (a checkpoint's temporary directory appearing, a step being logged); the
kill schedule is random, seeded, and replayable with `TL_JAX_FAULT_SEED`. The compile that waits
on a child process, as XLA's waits on `ptxas` on a GPU, is a `sleep` the step's sync is made to wait
for, and SIGTERM then goes to the whole process group, as `timeout` sends it. Checkpoints are
damaged by editing their files. A full disk is a file-size limit (`RLIMIT_FSIZE`, so a write
fails with EFBIG where a full disk gives ENOSPC; both are handled alike); a read-only directory
is `chmod 555`, with root's `CAP_DAC_OVERRIDE` dropped so that it applies. The bad batch is a
token-cache sequence overwritten with ids past the vocabulary.

What to expect, in short:

- exit codes: 0 done; 1 the training diverged (non-finite loss or parameters; the last good
  checkpoint is kept); 2 bad input or storage that cannot be written (one `tl-jax: error:`
  sentence naming the cause and the fix, no traceback, nothing already saved changed); 143
  pre-empted by SIGTERM and 130 stopped by Ctrl-C (either way a checkpoint of every step trained
  was saved; a second Ctrl-C stops at once).
- One job per workdir: `WORKDIR/lock.json` names the job using it (host, pid, start time); a
  second job exits 2 at once, and a lock whose process is gone (or silent for 5 minutes) is
  taken over with a warning. `tl-jax compress` re-run on a workdir skips the points it has
  already measured with the same settings.
- `best/best.json` holds a checksum of `best/params`, checked by everything that reads them.
- Re-running the same command resumes from the newest checkpoint that reads back with the
  checksum it was saved with; an unreadable one is moved to `checkpoints/STEP.unreadable` with a
  warning naming it, and with none readable the run refuses to start over.
- `train.on_nonfinite=stop` (default) or `skip`: skip drops a step whose gradients or updated
  parameters are not finite, on the device, and counts it in `skipped_steps`; ten skipped steps
  in a row stop the run as diverged. The learning-rate schedule counts the updates applied, so
  after k skipped steps it runs k steps behind `max_steps` (its last k steps of decay are not
  reached): a skipped step is a batch the model never learned from, and a schedule that jumped
  ahead would shorten warmup by the bad batches.
"""


def cell(text: str) -> str:
  """Table-safe text; a quoted `tl-jax: ...` message becomes a code span that may hold backticks."""
  text = text.replace("|", "\\|").replace("\n", " ")
  if "`tl-jax: " in text and text.endswith("`"):
    before, message = text.split("`tl-jax: ", 1)
    text = f"{before}`` tl-jax: {message[:-1]} ``"
  return text


def render(records: list[dict]) -> str:
  by_area = collections.defaultdict(list)
  for record in sorted(records, key=lambda r: r.get("order", [0, 0])):  # collection order
    by_area[record["area"]].append(record)
  order = [a for a in AREAS if a in by_area] + sorted(a for a in by_area if a not in AREAS)
  tests = {r["test"] for r in records}
  failed = sorted({r["test"] for r in records if r["result"] != "passed"})
  status = ("every test behind them passed" if not failed else
            f"**{len(failed)} of the tests behind them failed**: {', '.join(failed)}")
  lines = [HEADER, f"Last generated {datetime.date.today().isoformat()}: {len(records)} cases from "
           f"{len(tests)} tests; {status}.", ""]
  for area in order:
    lines += [f"## {area}", "", "| fault or bad input | what tl_jax did | test |", "| --- | --- | --- |"]
    for r in by_area[area]:
      test = r["test"].split("::")[0].removeprefix("tests/")
      mark = "" if r["result"] == "passed" else f" (**{r['result']}**)"
      lines.append(f"| {cell(r['fault'])} | {cell(r['outcome'])} | {test}{mark} |")
    lines.append("")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tests.faults.table")
  parser.add_argument("--records", default=str(RECORDS))
  parser.add_argument("--out", default=str(REPO / "docs" / "RELIABILITY.md"))
  args = parser.parse_args(argv)
  path = pathlib.Path(args.records)
  if not path.exists():
    print(f"{path} does not exist: run `python -m pytest tests/faults` first.", file=sys.stderr)
    return 2
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  pathlib.Path(args.out).write_text(render(records))
  print(f"{args.out}: {len(records)} cases")
  return 0


if __name__ == "__main__":
  sys.exit(main())
