"""Where a `train.schedule_horizon=seconds` run's decay ends, fixed and moved at the loop's syncs.

The decay must end where the training-seconds budget does, but a step's cost is known only once
steps have run. The end step is fixed from the pace over the first HORIZON_PACE_SHARE of the run,
then moved (the decay bending there, never jumping) where a later pace says it would miss the
budget. The step count lives in the optimizer state (`tl_jax/train/optimizer.py`), so it is
checkpointed with it; what is kept here is only this session's bookkeeping.
"""

from __future__ import annotations

import math

from tl_jax.config import TrainConfig
from tl_jax.train.optimizer import horizon_end, refit_horizon, with_horizon

# The share of the budget over which the pace is measured before the decay's end step is fixed
# (finetuning's warmup, 6% of the steps, ends after it).
HORIZON_PACE_SHARE = 0.05
# Once fixed, the end moves where the pace over at least HORIZON_PACE_SHARE of the budget since it
# was last set would end the schedule more than this share of the budget early or late: on an
# H200, 3x256's first 13 s ran 25% slower than the rest (the machine still writing its token
# cache), and a schedule fixed from them ended at 31 s of a 40 s budget (2026-12-04).
HORIZON_REFIT_SHARE = 0.02


def end_step(budget: float, step: int, train_seconds: float, pace: float, max_steps: int) -> int:
  """The step at which `budget` training seconds run out at `pace` seconds a step: at least
  the next step, at most `max_steps`."""
  return min(max_steps, step + max(math.ceil((budget - train_seconds) / pace), 1))


def moved_horizon(budget: float, step: int, train_seconds: float, horizon: int,
                  set_at: tuple[int, float], max_steps: int) -> int | None:
  """Where a seconds horizon's end should move to, or None to keep it: the pace since it was
  set (`set_at`: step, training seconds), once measured over HORIZON_PACE_SHARE of the budget,
  would end the schedule more than HORIZON_REFIT_SHARE of the budget off the budget."""
  steps, seconds = step - set_at[0], train_seconds - set_at[1]
  if steps <= 0 or seconds < HORIZON_PACE_SHARE * budget:
    return None
  pace = seconds / steps
  if abs(train_seconds + (horizon - step) * pace - budget) <= HORIZON_REFIT_SHARE * budget:
    return None
  return end_step(budget, step, train_seconds, pace, max_steps)


class SecondsHorizon:
  """One session's view of the decay's end.

  `end` is None for a steps schedule (nothing to do), 0 while the end is not fixed, else the step
  it is fixed at. The pace that fixes it is measured from this session's first sync, which
  follows its first, slower, step: one log window was too short where the first steps are slower
  (finetuning's first batch of each length), and a seconds horizon fixed from it ended 10-18% of
  the budget early on SST-2 (2-core CPU, 2026-12-04).
  """

  def __init__(self, train: TrainConfig, opt_state):
    self.train = train
    self.end = horizon_end(opt_state)
    self.pace_from: tuple[int, float] | None = None  # (step, training seconds) at the first sync
    self.set_at: tuple[int, float] | None = None  # where the end was last set, in this session
    self.fix_at: float | None = None  # the training second of the sync that fixes it, while not

  def due(self, step: int) -> bool:
    """Whether `step` is the schedule's end (the run stops there)."""
    return bool(self.end) and step >= self.end

  def at_sync(self, opt_state, step: int, train_seconds: float, window_pace: float):
    """(opt_state, note): the state with the end fixed or moved at this sync, and a line saying
    so (None where nothing changed). `window_pace` is the seconds a step since the last sync."""
    train = self.train
    first = self.pace_from is None  # this session's first sync
    if first:
      self.pace_from = (step, train_seconds)
      self.set_at = self.pace_from if self.end else None  # a resumed run's end, set earlier
    self.fix_at = None
    if self.end == 0:  # the pace over this session, and how long the run will train at it
      paced_steps = step - self.pace_from[0]
      pace = (train_seconds - self.pace_from[1]) / paced_steps if paced_steps else window_pace
      run_seconds = min(train.max_train_seconds, train_seconds + (train.max_steps - step) * pace)
      self.fix_at = self.pace_from[1] + HORIZON_PACE_SHARE * run_seconds
      if first or train_seconds < self.fix_at:
        return opt_state, None
      self.end = end_step(train.max_train_seconds, step, train_seconds, pace, train.max_steps)
      self.fix_at = None
      self.set_at = (step, train_seconds)
      return with_horizon(opt_state, train, self.end), (
          f"schedule: the decay ends at step {self.end}, where train.max_train_seconds="
          f"{train.max_train_seconds:g} runs out at {1e3 * pace:.1f} ms a step (steps "
          f"{self.pace_from[0]}-{step})")
    if self.end and self.set_at and step < self.end and train.max_train_seconds:
      moved = moved_horizon(train.max_train_seconds, step, train_seconds, self.end, self.set_at,
                            train.max_steps)
      if moved is not None and moved != self.end:
        note = (f"schedule: the decay's end moves from step {self.end} to {moved} at step {step}, "
                f"at the pace of steps {self.set_at[0]}-{step}")
        self.end, self.set_at = moved, (step, train_seconds)
        return refit_horizon(opt_state, train, moved), note
    return opt_state, None
