"""A non-finite loss, from a bad batch or a learning rate that blows the weights up.

train.on_nonfinite=stop (the default) ends the run with exit 1 and one sentence, keeping the
last good checkpoint; train.on_nonfinite=skip drops a bad step on device (counted as
skipped_steps) and still stops once steps keep failing. Each case resumes a copy of the
finished 20-step run (checkpoints 10 and 20) to step 40.

The bad batch is real data damage: one sequence of the token cache overwritten with an id
past the vocabulary, placed so that it is read at step BAD_STEP.
"""

import os
import shutil

import numpy as np
import pytest

from faults.harness import (SMALL, assert_one_sentence, checkpoint_meta, checkpoint_steps,
                            read_metrics, run, snapshot, tl_jax)

pytestmark = pytest.mark.slow
BAD_STEP = 27
TO_40 = [*SMALL, "--config.train.max_steps=40", "--override"]
HUGE_LR = ["--config.train.learning_rate=1e30"]
SKIP = ["--config.train.on_nonfinite=skip"]


@pytest.fixture(scope="module")
def poisoned_cache(finished, tmp_path_factory) -> str:
  """A copy of the session's token cache whose training sequence for step BAD_STEP holds ids
  no embedding row has."""
  from tl_jax import config as config_lib
  from tl_jax.data import cache as token_cache
  from tl_jax.data.loader import PackedSequences, TrainLoader
  from tl_jax.data.sources import make_source
  from tl_jax.data.tokenizer import Tokenizer
  cache_dir = str(tmp_path_factory.mktemp("poisoned") / "cache")
  shutil.copytree(os.environ["TL_JAX_CACHE"], cache_dir)
  config = config_lib.load(os.path.join(finished, "config.json"))
  tokenizer = Tokenizer(os.path.join(finished, "tokenizer", "spm.model"))
  cache = token_cache.prepare(make_source(config.data), "train", tokenizer,
                              config.data.max_train_tokens, cache_dir)
  loader = TrainLoader(PackedSequences(cache, config.data.seq_len), config.train.batch_size,
                       config.train.seed)
  body = config.data.seq_len - 1
  sequence = int(loader.indices(BAD_STEP - 1)[0])  # step s trains on batch s - 1
  tokens = np.memmap(os.path.join(cache.directory, "tokens.bin"), dtype=cache.meta["dtype"],
                     mode="r+", shape=(cache.meta["num_tokens"],))
  tokens[sequence * body:(sequence + 1) * body] = np.iinfo(tokens.dtype).max
  tokens.flush()
  return cache_dir


def checkpoints_snapshot(workdir):
  return snapshot(workdir / "checkpoints")


def test_bad_batch_stops_the_run_and_keeps_the_last_good_checkpoint(copy_of_finished, env,
                                                                     poisoned_cache, reliability):
  workdir = copy_of_finished
  before = checkpoints_snapshot(workdir)
  result = run(tl_jax("pretrain", f"--workdir={workdir}", *TO_40),
               dict(env, TL_JAX_CACHE=poisoned_cache))
  message = assert_one_sentence(result, "non-finite", "a step in 26..30", "on_nonfinite=skip",
                                "resumes from checkpoint 20", code=1)
  assert checkpoints_snapshot(workdir) == before  # no checkpoint of the poisoned state
  reliability("Non-finite loss", f"a corrupted batch (token ids past the vocabulary) at step "
              f"{BAD_STEP}, train.on_nonfinite=stop",
              f"exit 1 at the next log line, checkpoints 10 and 20 untouched: `{message}`")


def test_bad_batch_is_skipped_when_the_config_says_so(copy_of_finished, env, poisoned_cache,
                                                       reliability):
  workdir = copy_of_finished
  result = run(tl_jax("pretrain", f"--workdir={workdir}", *TO_40, *SKIP),
               dict(env, TL_JAX_CACHE=poisoned_cache))
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Traceback" not in result.stdout + result.stderr
  lines = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["skipped_steps"] for r in lines if r["step"] > 20] == [0, 1, 1, 1]  # steps 25..40
  assert np.isfinite(lines[-1]["loss"]) and lines[-1]["step"] == 40
  assert checkpoint_steps(workdir)[-1] == 40
  assert "1 steps skipped (non-finite loss)" in result.stdout.strip().splitlines()[-1]
  reliability("Non-finite loss", "the same corrupted batch, train.on_nonfinite=skip",
              "step 27 skipped on device (no update, optimizer state kept); the run finishes at "
              "step 40 with skipped_steps=1 in metrics.jsonl and a finite loss")


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_exploding_learning_rate_stops_the_run(copy_of_finished, env, mode, reliability):
  workdir = copy_of_finished
  before = checkpoints_snapshot(workdir)
  result = run(tl_jax("pretrain", f"--workdir={workdir}", *TO_40, *HUGE_LR,
                      *(SKIP if mode == "skip" else [])), env)
  expect = ("non-finite", "a step in 21..25") if mode == "stop" else ("steps up to step", "diverged")
  message = assert_one_sentence(result, *expect, "train.learning_rate", "resumes from checkpoint 20",
                                code=1)
  assert checkpoints_snapshot(workdir) == before
  assert checkpoint_meta(workdir, 20)["checksum"]  # still the good one, readable as before
  reliability("Non-finite loss", f"learning rate 1e30 from step 21, train.on_nonfinite={mode}",
              f"exit 1, checkpoints 10 and 20 untouched: `{message}`")
