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

  def optimal_params(self, flops):
    """The N that minimises the loss at C = 6 N D training FLOPs (Chinchilla's eq. 4)."""
    g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
    return g * np.power(np.asarray(flops, float) / 6, self.beta / (self.alpha + self.beta))

  def frontier(self, flops):
    """(N_opt, D_opt, L_opt) at each compute C = 6 N D: the compute-optimal size, its tokens
    C / (6 N_opt) and the law's loss there, a prediction of the law, not a measurement."""
    flops = np.asarray(flops, float)
    params = self.optimal_params(flops)
    tokens = flops / (6 * params)
    return params, tokens, self.loss(params, tokens)


@dataclasses.dataclass(frozen=True)
class Fit:
  law: Law
  intervals: dict[str, tuple[float, float]]  # parameter -> (5th, 95th percentile) over resamples
  residuals: np.ndarray  # log L - log prediction, per point
  points: tuple[Point, ...]
  resamples: int
  samples: tuple[Law, ...] = ()  # the laws fitted to the bootstrap resamples

  def interval(self, params, tokens, low: float = 5.0, high: float = 95.0) -> tuple[float, float]:
    """The 5th-95th percentile of the resampled laws' loss at (N, D): a prediction's interval."""
    if not self.samples:
      return math.nan, math.nan
    losses = [float(s.loss(params, tokens)) for s in self.samples]
    return float(np.percentile(losses, low)), float(np.percentile(losses, high))

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
  """(the objective, its gradient in theta): analytic, so that L-BFGS needs no finite
  differences (five times fewer evaluations)."""
  a, b, e, alpha, beta = theta
  terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
  top = terms.max(axis=0)
  weights = np.exp(terms - top)
  total = weights.sum(axis=0)
  residual = top + np.log(total) - log_l
  weights /= total  # d prediction / d term: the softmax of the terms
  slope = np.clip(residual, -HUBER_DELTA, HUBER_DELTA) / HUBER_DELTA  # the Huber loss's derivative
  grad = np.array([np.sum(slope * weights[0]), np.sum(slope * weights[1]), np.sum(slope * weights[2]),
                   -np.sum(slope * weights[0] * log_n), -np.sum(slope * weights[1] * log_d)])
  # Scaled by 1 / delta: the same minimum, but L-BFGS's stopping rules see changes in the
  # linear (|r| > delta) part of the loss.
  return float(_huber(residual).sum() / HUBER_DELTA), grad


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
                      method="L-BFGS-B", jac=True, bounds=BOUNDS,
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
  return Fit(law, intervals, residuals, tuple(points), len(samples), tuple(samples))


@dataclasses.dataclass(frozen=True)
class Size:
  """A pretraining size as the budget predictions see it: its label, non-embedding parameters
  and pace (tokens seen per training second, the mean over its seeds)."""
  label: str
  params: float
  tokens_per_second: float


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The law's loss for one size trained for `seconds` at its measured pace: a prediction."""
  seconds: float
  size: str
  tokens: float  # pace x seconds
  loss: float
  interval: tuple[float, float]  # 5th-95th percentile over the bootstrap laws
  wins: float  # the share of bootstrap laws under which this size has the lowest loss


def predict_budgets(fit: Fit, sizes: Sequence[Size], budgets: Sequence[float]) -> list[list[Prediction]]:
  """For each training-seconds budget, every size's predicted loss, lowest first. Seconds turn
  into tokens at each size's own pace, as if its run had gone on at that pace (the law cannot
  know a schedule stretched to the longer budget)."""
  out = []
  for seconds in budgets:
    tokens = [s.tokens_per_second * seconds for s in sizes]
    wins = np.zeros(len(sizes))
    for law in fit.samples:
      wins[int(np.argmin([law.loss(s.params, d) for s, d in zip(sizes, tokens)]))] += 1
    rows = [Prediction(seconds, s.label, d, float(fit.law.loss(s.params, d)), fit.interval(s.params, d),
                       float(wins[i] / max(len(fit.samples), 1)))
            for i, (s, d) in enumerate(zip(sizes, tokens))]
    out.append(sorted(rows, key=lambda p: p.loss))
  return out
