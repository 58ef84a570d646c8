"""Watching a run: a tqdm progress bar in env steps, and a live learning curve in notebooks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Self


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a plain IPython terminal, not a script)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class Progress:
    """Progress bar over env steps: steps/s and ETA from tqdm, the latest eval return as postfix.

    Args:
      total_env_steps: the run's env-step budget.
      desc: the bar's label (e.g. the algorithm and env).
      notebook: use tqdm's notebook widget; None detects a Jupyter kernel.
      **tqdm_kwargs: passed to tqdm (e.g. ``file=``, ``disable=``, ``mininterval=``).
    """

    def __init__(
        self, total_env_steps: int, desc: str = "", notebook: bool | None = None, **tqdm_kwargs: Any
    ):
        if notebook is None:
            notebook = in_notebook()
        if notebook:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        kwargs = {"unit": "step", "unit_scale": True, "dynamic_ncols": True, "smoothing": 0.1}
        self.bar = tqdm(total=int(total_env_steps), desc=desc, **(kwargs | tqdm_kwargs))
        self.eval_return: float | None = None
        self.eval_success: float | None = None

    def update(self, row: Mapping[str, Any]) -> None:
        """Advance to ``row['env_steps']``; show ``row['eval_return']`` (and ``eval_success``) when
        the row has one."""
        if "env_steps" in row:
            self.bar.update(max(int(row["env_steps"]) - self.bar.n, 0))
        if row.get("eval_return") is not None and math.isfinite(float(row["eval_return"])):
            self.eval_return = float(row["eval_return"])
            self.eval_success = row.get("eval_success")  # tasks that score success (OmniReset)
        if self.eval_return is not None:
            shown = {"eval_return": f"{self.eval_return:.4g}"}
            if self.eval_success is not None:
                shown["success"] = f"{self.eval_success:.0%}"
            self.bar.set_postfix(**shown, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LiveCurve:
    """A learning curve redrawn in place in a notebook cell; outside IPython it only keeps rows."""

    def __init__(self, x: str = "env_steps", y: str = "eval_return", title: str | None = None):
        self.x, self.y, self.title = x, y, title
        self.points: list[tuple[float, float]] = []
        self._handle = None
        self._enabled = in_notebook()

    def update(self, row: Mapping[str, Any]) -> None:
        if row.get(self.y) is None or row.get(self.x) is None:
            return
        self.points.append((float(row[self.x]), float(row[self.y])))
        if self._enabled:
            self._draw()

    def _draw(self) -> None:
        from IPython.display import display
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.5), dpi=90)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(*zip(*self.points), marker=".")
        ax.set_xlabel(self.x.replace("_", " "))
        ax.set_ylabel(self.y.replace("_", " "))
        if self.title:
            ax.set_title(self.title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
