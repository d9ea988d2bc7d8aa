"""What the fault suite tried and what tl-jax did, as the suite observed it.

A test that injects a fault or a bad input takes the `reliability` fixture and calls it once
per case: `reliability(area, fault, outcome)`, where `outcome` is built from what the run
really printed and left (exit code, its one sentence, the checkpoints). When the test ends,
its cases are appended to RECORDS with the test's own result (passed or failed), and
`python -m tests.faults.table` turns them into docs/RELIABILITY.md. The first case a pytest
session records drops every line another session wrote, so the table is always one session's;
under pytest-xdist the workers of one run share its `testrunuid` and keep each other's lines.
Each case carries its test's place in the collection, so the table's order does not depend on
which worker ran it first.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import re
import uuid

import pytest

RECORDS = pathlib.Path(os.environ.get("TL_JAX_RELIABILITY_RECORDS") or
                       pathlib.Path(__file__).resolve().parents[2] / "build" / "reliability.jsonl")
_KEY = pytest.StashKey[list]()
_session = {"started": False}


@pytest.fixture
def reliability(request, tmp_path_factory):
  """`note(area, fault, outcome)`: records one fault or bad input and what tl-jax did. Paths
  under pytest's temporary directory read as $TMP, so the table does not change run to run."""
  notes = request.node.stash.setdefault(_KEY, [])
  base = str(tmp_path_factory.getbasetemp())
  repo = str(pathlib.Path(__file__).resolve().parents[2])

  def note(area: str, fault: str, outcome: str) -> None:
    def clean(text: str) -> str:  # $TMP/<test's own directory>/x -> $TMP/x: the same every run
      return re.sub(r"\$TMP/[^/\s]+/", "$TMP/", text.replace(base, "$TMP")).replace(repo + os.sep, "")

    notes.append({"area": area, "fault": clean(fault), "outcome": clean(outcome)})
  return note


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  report = (yield).get_result()
  notes = item.stash.get(_KEY, None)
  if report.when != "call" or not notes:
    return
  workerinput = getattr(item.config, "workerinput", None)  # set in pytest-xdist's workers
  run = workerinput["testrunuid"] if workerinput else _session.setdefault("run", uuid.uuid4().hex)
  place = item.session.items.index(item)
  RECORDS.parent.mkdir(parents=True, exist_ok=True)
  with open(RECORDS, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # the workers of one run append to the same file
    if not _session["started"]:
      f.seek(0)
      kept = [line for line in f if json.loads(line).get("run") == run]
      f.truncate(0)
      f.writelines(kept)
      _session["started"] = True
    for i, note in enumerate(notes):
      f.write(json.dumps({**note, "test": item.nodeid, "result": report.outcome, "run": run,
                          "order": [place, i]}) + "\n")
