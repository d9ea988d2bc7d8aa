"""Compression grids: `tl-jax compress --workdir=WORKDIR --config=configs/compress.py:GRID`.

WORKDIR is a finetuned, translation or pretraining run, judged by its own metric (accuracy,
BLEU, eval loss). Every grid starts with the uncompressed model; results go to
WORKDIR/compress.jsonl, one line per point (tl_jax/compress/grid.py).

Grids:
  quick   uniform 8/4/2 bits, 50% and 90% magnitude pruning, 50% pruned + 4 bits;
          seconds on a CPU, for smoke tests and the demo
  paper   the paper's axes (Li et al. 2020, Figs. 7-9): uniform and k-means at 8/6/4/3/2 bits,
          magnitude pruning 10-90%, 2:4, and pruning 30/50/70% then 8/6/4 bits; plus GPTQ
          (calibrated on the run's training batches) at every bit width and combination
  bits    quantization alone, every width 1..8, uniform, k-means and GPTQ
  sparsity  magnitude pruning alone, 0-90% in steps of 10%

Settings every point shares live in `quant` and `prune`, e.g. --config.quant.granularity=group,
--config.quant.symmetric=false, --config.prune.scope=layer, --config.quant.targets=attention,ffn.
"""

from tl_jax.config import CompressConfig
from tl_jax.errors import UserError


def quick() -> CompressConfig:
  c = CompressConfig()
  c.bits = "8,4,2"
  c.sparsities = "0.5,0.9"
  c.combined_sparsities = "0.5"
  c.combined_bits = "4"
  return c


def paper() -> CompressConfig:
  c = CompressConfig()
  c.quant_methods = "uniform,kmeans,gptq"
  c.bits = "8,6,4,3,2"
  c.sparsities = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
  c.nm = True
  c.combined_sparsities = "0.3,0.5,0.7"
  c.combined_bits = "8,6,4"
  return c


def bits() -> CompressConfig:
  c = CompressConfig()
  c.quant_methods = "uniform,kmeans,gptq"
  c.bits = "8,7,6,5,4,3,2,1"
  c.sparsities = ""
  c.combined_sparsities = ""
  return c


def sparsity() -> CompressConfig:
  c = CompressConfig()
  c.bits = ""
  c.sparsities = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
  c.combined_sparsities = ""
  return c


PRESETS = {"quick": quick, "paper": paper, "bits": bits, "sparsity": sparsity}


def get_config(preset: str) -> CompressConfig:
  if preset not in PRESETS:
    raise UserError(f"unknown compression grid {preset!r}; choose one of {', '.join(PRESETS)}.")
  return PRESETS[preset]()
