"""Markdown pieces for report.md: tables, images, collapsed blocks, number formats."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A GitHub-flavoured table; numbers right-aligned, `|` in cells escaped."""
  def cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")
  def numeric(i: int) -> bool:  # right-align columns of numbers (blanks and dashes aside)
    filled = [r[i] for r in rows if str(r[i]) not in ("", "—")]
    return bool(filled) and all(_is_numberish(x) for x in filled)
  numeric = [numeric(i) for i in range(len(header))]
  lines = ["| " + " | ".join(cell(h) for h in header) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
  lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
  return "\n".join(lines)


def _is_numberish(x) -> bool:
  if isinstance(x, (int, float)):
    return True
  try:
    float(str(x).rstrip("%").replace(",", ""))
    return True
  except ValueError:
    return False


def image(path: str, alt: str) -> str:
  return f"![{alt}]({os.path.basename(path)})"


def details(summary: str, body: str) -> str:
  """A collapsed block (long tables), expanded by a click where markdown is rendered."""
  return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def num(x: float | None, digits: int = 4) -> str:
  """`digits` significant digits; '—' for a missing value."""
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "—"
  return f"{x:.{digits}g}"


def fixed(x: float | None, decimals: int = 4) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "—"
  return f"{x:.{decimals}f}"


def seconds(x: float) -> str:
  return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def percent(x: float | None, decimals: int = 1) -> str:
  return "—" if x is None else f"{100 * x:.{decimals}f}%"


def slug(text: str) -> str:
  """A file-name-safe form of a task or preset name."""
  out = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.strip().lower())
  return out.strip("-") or "task"
