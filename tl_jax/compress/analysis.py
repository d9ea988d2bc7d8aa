"""Why some models compress better (the paper's RQ5): statistics of the weights themselves.

Heavy tails make quantization hard: a per-channel absmax grid spends its levels on
the few largest weights. Per stacked matrix we record the excess kurtosis (0 for a
Gaussian) and the fraction of outliers, weights more than OUTLIER_SIGMAS standard
deviations from the mean (0.27% for a Gaussian). The per-point measures (relative
weight error, output KL) are computed where the point is evaluated (compress/grid.py).
"""

from __future__ import annotations

import numpy as np

from tl_jax.compress.layout import Layout

OUTLIER_SIGMAS = 3.0


def matrix_statistics(w3: np.ndarray) -> list[dict]:
  """[{kurtosis, outliers}] per stacked matrix of a [S, I, O] view."""
  out = []
  for w in np.asarray(w3, np.float64).reshape(w3.shape[0], -1):
    centred = w - w.mean()
    var = np.mean(centred ** 2)
    if var == 0:
      out.append({"kurtosis": 0.0, "outliers": 0.0})
      continue
    kurtosis = float(np.mean(centred ** 4) / var ** 2 - 3.0)
    outliers = float(np.mean(np.abs(centred) > OUTLIER_SIGMAS * np.sqrt(var)))
    out.append({"kurtosis": round(kurtosis, 4), "outliers": round(outliers, 6)})
  return out


def weight_statistics(params: dict, layouts: dict[str, Layout], paths: list[str]) -> dict:
  """{per-layer name: {kurtosis, outliers}} over the matrices in `paths` (flat params on host)."""
  stats = {}
  for path in paths:
    layout = layouts[path]
    per_matrix = matrix_statistics(layout.to_view(np.asarray(params[path])))
    stats.update(zip(layout.layer_names, per_matrix))
  return stats


def summarize(stats: dict) -> dict:
  """Means over the matrices: one number per model for tables."""
  if not stats:
    return {"kurtosis": 0.0, "outliers": 0.0}
  return {k: float(np.mean([s[k] for s in stats.values()])) for k in ("kurtosis", "outliers")}
