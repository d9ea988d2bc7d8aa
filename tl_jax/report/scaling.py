"""A scaling law fitted to a sweep's pretraining evals: L(N, D) = E + A / N^alpha + B / D^beta.

Chinchilla's form and fitting procedure (Hoffmann et al. 2022, approach 3): N is the model's
non-embedding parameters, D the training tokens seen at the eval, L the eval loss. The fit
minimises a Huber loss (delta 1e-3) between log L and the log of the prediction, written as a
log-sum-exp of (log A - alpha log N, log B - beta log D, log E), with L-BFGS from a grid of
starting points; intervals come from refitting on bootstrap resamples of the evals. The fit
describes the sweep's own regime (data, tokenizer, recipe); predictions past its longest run
are extrapolations and are labelled so wherever they appear.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

MIN_SIZES = 3
HUBER_DELTA = 1e-3


@dataclasses.dataclass(frozen=True)
class Point:
  run: str
  params: float  # N: non-embedding parameters
  tokens: float  # D: tokens seen at the eval
  loss: float


@dataclasses.dataclass(frozen=True)
class Law:
  E: float
  A: float
  alpha: float
  B: float
  beta: float

  def loss(self, params, tokens):
    return self.E + self.A / np.power(params, self.alpha) + self.B / np.power(tokens, self.beta)

  def optimal_params(self, flops: float) -> float:
    """The N that minimises the loss at C = 6 N D training FLOPs (Chinchilla's eq. 4)."""
    g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
    return g * (flops / 6) ** (self.beta / (self.alpha + self.beta))


@dataclasses.dataclass(frozen=True)
class Fit:
  law: Law
  intervals: dict[str, tuple[float, float]]  # parameter -> (5th, 95th percentile) over resamples
  residuals: np.ndarray  # log L - log prediction, per point
  points: tuple[Point, ...]
  resamples: int

  @property
  def at_bounds(self) -> list[str]:
    """Exponents the fit pushed to a bound of BOUNDS: the data do not follow the law there."""
    return [name for name, (lo, hi) in zip(("alpha", "beta"), BOUNDS[3:])
            if not lo * 1.01 < getattr(self.law, name) < hi * 0.99]

  @property
  def rmse(self) -> float:
    return float(np.sqrt(np.mean(self.residuals ** 2)))


def refusal(points: Sequence[Point]) -> str | None:
  """One sentence when the points cannot support a fit, else None."""
  sizes = len({p.params for p in points})
  if sizes < MIN_SIZES:
    return (f"A scaling law needs pretraining runs of at least {MIN_SIZES} sizes; these runs have "
            f"{sizes}, so none is fitted (add sizes to the sweep).")
  return None


def _huber(r: np.ndarray) -> np.ndarray:
  a = np.abs(r)
  return np.where(a <= HUBER_DELTA, 0.5 * r ** 2, HUBER_DELTA * (a - 0.5 * HUBER_DELTA))


def _objective(theta, log_n, log_d, log_l):
  a, b, e, alpha, beta = theta
  terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
  top = terms.max(axis=0)
  predicted = top + np.log(np.exp(terms - top).sum(axis=0))
  return float(_huber(predicted - log_l).sum() / HUBER_DELTA)  # scaled: the same minimum, but
  # L-BFGS's stopping rules see changes in the linear (|r| > delta) part of the loss


# Chinchilla's grid of starting points, coarsened: the objective has local minima.
STARTS = tuple(itertools.product((0.0, 5.0, 10.0), (0.0, 5.0, 10.0), (-1.0, 0.5), (0.2, 0.5),
                                 (0.2, 0.5)))


# log A, log B, log E free; the exponents positive (a loss that grows with N or D is no law).
BOUNDS = ((None, None), (None, None), (None, None), (1e-3, 3.0), (1e-3, 3.0))


def _fit_once(points: Sequence[Point], starts=STARTS) -> tuple[Law, np.ndarray]:
  from scipy.optimize import minimize  # a dependency of jax
  log_n = np.log([p.params for p in points])
  log_d = np.log([p.tokens for p in points])
  log_l = np.log([p.loss for p in points])
  best = None
  for start in starts:
    result = minimize(_objective, np.asarray(start, float), args=(log_n, log_d, log_l),
                      method="L-BFGS-B", bounds=BOUNDS,
                      options={"ftol": 1e-12, "gtol": 1e-9, "maxiter": 5000})
    if best is None or result.fun < best.fun:
      best = result
  a, b, e, alpha, beta = best.x
  return Law(E=math.exp(e), A=math.exp(a), alpha=float(alpha), B=math.exp(b), beta=float(beta)), best.x


def fit(points: Sequence[Point], resamples: int = 50, seed: int = 0) -> Fit:
  """The law fitted to `points`, with bootstrap intervals over resampled evals; call only where
  `refusal(points)` is None."""
  law, theta = _fit_once(points)
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(resamples):
    chosen = [points[i] for i in rng.integers(0, len(points), len(points))]
    if refusal(chosen) is None:  # started from the full fit: a resample moves it a little
      samples.append(_fit_once(chosen, starts=(theta,))[0])
  names = ("E", "A", "alpha", "B", "beta")
  intervals = {n: (float(np.percentile([getattr(s, n) for s in samples], 5)),
                   float(np.percentile([getattr(s, n) for s in samples], 95))) if samples
               else (math.nan, math.nan) for n in names}
  predicted = law.loss(np.array([p.params for p in points]), np.array([p.tokens for p in points]))
  residuals = np.log([p.loss for p in points]) - np.log(predicted)
  return Fit(law, intervals, residuals, tuple(points), len(samples))
