"""A metric against memory, one column triple per model: the table of compression grids.

    python -m tl_jax.report.table WORKDIR... [--markdown]

Reads each workdir's compress.jsonl (the last line of each point wins, so a re-run grid
replaces its older numbers) and prints one row per point with, for every model, its
metric (accuracy, BLEU or eval loss, as the grid recorded it) and memory. Models are
labelled by workdir name and shape (layers x width).
"""

from __future__ import annotations

import argparse
import os

from tl_jax.report.analysis import point_value
from tl_jax.tasks.workdir import Workdir


def read_points(workdir: str) -> dict[str, dict]:
  """{point name: its newest line} of one workdir's compress.jsonl, in grid order."""
  return Workdir(workdir, None).compress_points()


def model_label(workdir: str, record: dict) -> str:
  m = record["model"]
  layers = m["num_layers"] if not m.get("decoder_layers") else f"{m['num_layers']}+{m['decoder_layers']}"
  return f"{os.path.basename(os.path.normpath(workdir))} {layers}x{m['d_model']} ({m['params'] / 1e6:.0f}M)"


def rows(workdirs: list[str]) -> tuple[list[str], list[list[str]]]:
  models = [read_points(w) for w in workdirs]
  header = ["point", "bits", "sparsity"]
  for workdir, points in zip(workdirs, models):
    first = next(iter(points.values()))
    label = model_label(workdir, first)
    header += [f"{label} {first.get('metric', 'accuracy')}", f"{label} MiB", f"{label} ratio"]
  names = []
  for points in models:
    names += [n for n in points if n not in names]
  body = []
  for name in names:
    first = next(p[name] for p in models if name in p)
    row = [name, str(first["bits"]), f"{first.get('achieved_sparsity', first['sparsity']):.2f}"]
    for points in models:
      r = points.get(name)
      row += ([f"{point_value(r):.4f}", f"{r['memory_bytes'] / 2**20:.2f}", f"{r['memory_ratio']:.3f}"]
              if r else ["", "", ""])
    body.append(row)
  return header, body


def render(header: list[str], body: list[list[str]], markdown: bool) -> str:
  if markdown:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
  widths = [max(len(x) for x in col) for col in zip(header, *body)]
  fmt = lambda r: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
  return "\n".join([fmt(header)] + [fmt(r) for r in body])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--markdown", action="store_true")
  args = parser.parse_args(argv)
  print(render(*rows(args.workdirs), markdown=args.markdown))


if __name__ == "__main__":
  main()
