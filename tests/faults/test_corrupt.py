"""A damaged newest checkpoint: the run falls back to the one before, says which one it could
not read and where it put it, and redoes the lost steps to the same bits; with no readable
checkpoint at all it refuses to start over, touching nothing.

The damage is done to the finished 20-step run's checkpoint 20 (checkpoints 10 and 20); the
same command then resumes from 10 and must save a checkpoint 20 equal to the original.
"""

import os
import pathlib

import pytest

from faults.harness import (SMALL, assert_one_sentence, checkpoint_meta, checkpoint_steps,
                            error_lines, read_metrics, run, snapshot, tl_jax)

pytestmark = pytest.mark.slow
ARGS = [*SMALL, "--config.train.max_steps=20"]


def largest_data_file(checkpoint: pathlib.Path) -> pathlib.Path:
  """The biggest array file of a checkpoint's state (the embeddings and their Adam moments)."""
  return max((checkpoint / "state").rglob("d/*"), key=lambda p: p.stat().st_size)


def flip_bytes(checkpoint):
  path = largest_data_file(checkpoint)
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
  path.write_bytes(bytes(data))


def truncate(checkpoint):
  path = largest_data_file(checkpoint)
  os.truncate(path, path.stat().st_size // 2)


def delete_data(checkpoint):
  largest_data_file(checkpoint).unlink()


def garble_meta(checkpoint):
  (checkpoint / "meta" / "metadata").write_text('{"stopwatch": {"train_sec')


DAMAGE = {
    "bytes-flipped": (flip_bytes, "16 bytes flipped in the middle of its largest array file "
                                  "(orbax reads it without complaint)"),
    "truncated": (truncate, "its largest array file truncated to half"),
    "data-file-deleted": (delete_data, "its largest array file deleted"),
    "meta-garbled": (garble_meta, "its JSON metadata (stopwatch, checksum) cut short"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(copy_of_finished, finished, env,
                                                              damage, reliability):
  workdir = copy_of_finished
  damage_fn, description = DAMAGE[damage]
  damage_fn(workdir / "checkpoints" / "20")
  damaged = snapshot(workdir / "checkpoints" / "20")

  result = run(tl_jax("pretrain", f"--workdir={workdir}", *ARGS), env)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Traceback" not in result.stdout + result.stderr
  warnings = error_lines(result.stderr)
  assert len(warnings) == 1, result.stderr
  aside = workdir / "checkpoints" / "20.unreadable"
  for fragment in ("tl-jax: warning: checkpoint 20 ", str(workdir / "checkpoints" / "20"),
                   f"moved to {aside}", "checkpoint 10 is used instead"):
    assert fragment in warnings[0], warnings[0]
  assert "resumed from step 10 " in result.stdout, result.stdout
  assert snapshot(aside) == damaged  # kept as it was, for a look
  assert checkpoint_steps(workdir) == [10, 20]
  # The lost steps are redone to the same bits (the checksums cover every array).
  assert checkpoint_meta(workdir, 20)["checksum"] == checkpoint_meta(finished, 20)["checksum"]
  final = lambda w: [r["loss"] for r in read_metrics(w) if r["step"] == 20 and "loss" in r]
  assert final(workdir) == final(finished)
  reliability("Damaged checkpoints", f"newest checkpoint (20) with {description}",
              f"falls back to checkpoint 10 with `{warnings[0]}`; redoes steps 11-20 to the same "
              "bits")


def test_no_readable_checkpoint_is_refused_and_nothing_changes(copy_of_finished, env, reliability):
  workdir = copy_of_finished
  truncate(workdir / "checkpoints" / "20")
  flip_bytes(workdir / "checkpoints" / "10")
  before = snapshot(workdir)
  result = run(tl_jax("pretrain", f"--workdir={workdir}", *ARGS), env)
  message = assert_one_sentence(result, "no checkpoint in", "could be read", "--workdir")
  assert snapshot(workdir) == before  # nothing moved aside, no fresh start over the old run
  reliability("Damaged checkpoints", "every checkpoint damaged (10 bytes-flipped, 20 truncated)",
              f"exit 2, nothing changed, no silent restart from scratch: `{message}`")


def test_damaged_best_parameters_are_refused_by_their_checksum(copy_of_finished, env, reliability):
  """best/params is what finetuning, translate-file and compress read: flipped bytes there,
  which orbax reads without complaint, are caught by best.json's checksum."""
  workdir = copy_of_finished
  assert "checksum" in __import__("json").loads((workdir / "best" / "best.json").read_text())
  path = max((workdir / "best" / "params").rglob("d/*"), key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  before = snapshot(workdir)
  result = run(tl_jax("compress", "--config=configs/compress.py:quick", f"--workdir={workdir}"), env)
  message = assert_one_sentence(result, f"the best parameters in {workdir}/best could not be read",
                                "differ from the checksum saved with it", "checkpoint=latest")
  assert snapshot(workdir) == before  # no compress.jsonl line from damaged parameters
  reliability("Damaged checkpoints", "best/params with one byte flipped, read by `tl-jax compress`",
              f"exit 2, nothing written: `{message}`")
