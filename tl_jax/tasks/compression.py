"""`tl-jax compress` on any workdir: the task turns its run into the grid's Target.

The grid (compress/grid.py) is handed flat parameters on one device, their layouts, and an
evaluation judged by the task's metric: accuracy for a finetuned classifier, BLEU (sacreBLEU,
decoded as the run's eval config says) for a translator, eval loss (with perplexity) for a
masked LM. The evaluation is the same `Scoring` the run was trained with, restricted to its
primary eval split, on a one-device mesh, with the KL divergence from the uncompressed model.
"""

from __future__ import annotations

import jax

from tl_jax.compress import apply as compress_apply
from tl_jax.compress import grid
from tl_jax.compress import layout as layout_lib
from tl_jax.config import CompressConfig
from tl_jax.tasks import scoring as scoring_lib
from tl_jax.tasks.workdir import Workdir


def target(run: Workdir, config: CompressConfig) -> grid.Target:
  task = run.task
  mesh, rules = run.one_device()
  which = run.choose(config.checkpoint, field="checkpoint")
  tokenizer = run.tokenizer()
  model = task.model(tokenizer.vocab_size)
  scoring = task.scoring(tokenizer, model, mesh, rules, compression=True,
                         max_examples=config.max_eval_examples, batch_size=config.eval_batch_size)
  params, described = run.restore_params(which, mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  evaluator = scoring_lib.Evaluator(scoring, jax.tree.map(lambda _: replicated, params), kl=True)
  params = compress_apply.flat(params)
  layouts = layout_lib.model_layouts(model, task.example_input())

  def calibration():
    loader = task.loader(tokenizer)
    batches = [loader.batch(i) for i in range(config.calibration_batches)]
    return ((lambda p, b: task.forward(model, p, b, tokenizer)), batches,
            lambda b: task.real_positions(b, tokenizer))

  m = task.config.model
  traced_before = dict(scoring_lib.TRACES)  # this grid's compiles, not earlier ones in the process
  return grid.Target(
      workdir=run.path, described=described, params=params, layouts=layouts,
      metric=task.metric.key, higher_is_better=task.metric.higher_is_better,
      evaluate=lambda flat: evaluator(compress_apply.unflat(flat)), split=scoring.primary,
      examples=scoring.examples,
      model={"name": task.config.name, "task": task.command, "num_layers": m.num_layers,
             "decoder_layers": m.decoder_layers, "d_model": m.d_model,
             "params": sum(l.size for l in layouts.values())},
      frozen_masks=task.frozen_masks(params, layouts), calibration=calibration,
      compiles=lambda: {k: n - traced_before.get(k, 0) for k, n in scoring_lib.TRACES.items()
                        if n > traced_before.get(k, 0)})


def run(config: CompressConfig, workdir: str) -> int:
  """`tl-jax compress --workdir=W`: the grid of `config` over W's best (or latest) parameters."""
  return grid.run(config, target(Workdir.open(workdir), config))
