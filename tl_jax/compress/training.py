"""Compression while finetuning: pruning masks on a schedule, and quantization-aware training.

The masks live in the train state (`TrainState.masks`, a sub-tree of the parameters), so
they are checkpointed and resumed like everything else; `train/step.py` drops their
gradients and re-applies them after each update. This module decides when they change:
magnitude pruning rises from 0 to `prune.sparsity` on Zhu & Gupta's (2017) cubic schedule,
recomputed every `prune.every_steps`; N:M masks are set once, at the start step.
Quantization-aware training runs the forward pass through the same fake quantizer as
`tl-jax compress` and lets gradients pass straight through.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tl_jax.compress import apply
from tl_jax.compress.prune import cubic_sparsity
from tl_jax.config import PruneConfig, QuantConfig


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingCompression:
  layouts: dict  # flat {path: Layout}
  prune: PruneConfig
  qat: QuantConfig
  max_steps: int

  @property
  def pruning(self) -> bool:
    return self.prune.method != "none"

  @property
  def begin_step(self) -> int:
    return round(self.prune.begin_fraction * self.max_steps)

  @property
  def end_step(self) -> int:
    """From here on the target sparsity holds: the only steps worth keeping as `best`."""
    if self.prune.method == "nm" or self.prune.schedule == "oneshot":
      return self.begin_step
    return max(self.begin_step + 1, round(self.prune.end_fraction * self.max_steps))

  def masked(self, params):
    """The sub-tree of `params` that carries masks (for init_state), or None."""
    if not self.pruning:
      return None
    paths = apply.prune_targets(self.layouts, self.prune)
    return apply.unflat({p: apply.flat(params)[p] for p in paths})

  def sparsity_at(self, step):
    if self.prune.schedule == "oneshot" or self.prune.method == "nm":
      return jnp.where(step >= self.begin_step, self.prune.sparsity, 0.0)
    return cubic_sparsity(step, self.prune.sparsity, self.begin_step, self.end_step)

  def update_masks(self, state):
    """The state with masks recomputed where the schedule says so, and applied."""
    if not self.pruning:
      return state
    step, begin, end = state.step, self.begin_step, self.end_step
    if self.prune.method == "nm" or self.prune.schedule == "oneshot":
      due = step == begin
    else:
      due = (step >= begin) & (step <= end) & (((step - begin) % self.prune.every_steps == 0)
                                               | (step == end))

    def recompute():
      params = apply.flat(state.params)
      masks = apply.masks_for(params, self.layouts, self.prune, self.sparsity_at(step))
      return apply.unflat(masks)

    masks = jax.lax.cond(due, recompute, lambda: state.masks)
    flat_masks = apply.flat(masks)
    params = apply.unflat(apply.apply_masks(apply.flat(state.params), flat_masks))
    return state.replace(params=params, masks=masks)

  def forward(self, params, masks=None):
    """The parameters the forward pass sees: fake-quantized with straight-through gradients
    under QAT, else as they are."""
    if self.qat.method == "none":
      return params
    flat_masks = apply.flat(masks) if masks is not None else {}
    quantized = apply.fake_quant_straight_through(apply.flat(params), self.layouts, self.qat,
                                                  self.qat.bits, flat_masks)
    return apply.unflat(quantized)

  def derived_masks(self, params):
    """Masks read off a pruned model's zeros (what `tl-jax compress` sees), or None."""
    if not self.pruning:
      return None
    flat_params = apply.flat(params)
    return apply.unflat({p: flat_params[p] != 0 for p in apply.prune_targets(self.layouts, self.prune)})

