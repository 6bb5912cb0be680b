"""Figures for interpolation curves, layer distances and layer sharpness.

Each function draws on a given matplotlib ``Axes`` (so notebooks can lay out
their own figures) or, with ``path``, saves a PNG. matplotlib is imported
lazily with the Agg backend when saving, so servers need no display.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def _figure(ax):
  if ax is not None:
    return ax.figure, ax
  import matplotlib
  if matplotlib.get_backend().lower() != "agg" and not _interactive():
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt.subplots(figsize=(6, 4))


def _interactive() -> bool:
  import sys
  return "ipykernel" in sys.modules


def plot_curve(curve: Sequence[Mapping[str, Any]], *, ax=None,
               title: str = "", path: str | None = None):
  """Accuracies (left axis, %) and losses (right axis) against alpha."""
  fig, ax = _figure(ax)
  alphas = [p["alpha"] for p in curve]
  styles = {"clean": "tab:blue", "adv": "tab:red", "ood": "tab:green"}
  for kind, color in styles.items():
    if f"{kind}_acc" in curve[0]:
      ax.plot(alphas, [100 * p[f"{kind}_acc"] for p in curve], "o-",
              color=color, label=f"{kind} acc")
  ax.set_xlabel("alpha  (0 = A, 1 = B)")
  ax.set_ylabel("accuracy (%)")
  twin = ax.twinx()
  for kind in ("clean", "adv"):
    if f"{kind}_loss" in curve[0]:
      twin.plot(alphas, [p[f"{kind}_loss"] for p in curve], "--",
                color=styles[kind], alpha=0.6, label=f"{kind} loss")
  twin.set_ylabel("cross-entropy (dashed)")
  lines = ax.get_legend_handles_labels()
  more = twin.get_legend_handles_labels()
  ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  return _finish(fig, path)


def plot_layer_values(values: Mapping[str, float], *, ax=None,
                      ylabel: str = "", title: str = "",
                      highlight: Sequence[str] = (), path: str | None = None):
  """One bar per layer, in the given (depth) order; ``highlight`` in red."""
  fig, ax = _figure(ax)
  names = list(values)
  colors = ["tab:red" if n in highlight else "tab:blue" for n in names]
  ax.bar(range(len(names)), [values[n] for n in names], color=colors)
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names, rotation=90, fontsize=6)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  fig.tight_layout()
  return _finish(fig, path)


def _finish(fig, path: str | None):
  if path is not None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    if not _interactive():
      import matplotlib.pyplot as plt
      plt.close(fig)
  return fig
