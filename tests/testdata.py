"""What several test modules share: the repository's paths, the study texts in
``tests/studies/``, and synthetic escape tables (tests never import each other)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
STUDIES = ROOT / "studies"
EXAMPLES = STUDIES / "examples"


def study_text(name: str) -> str:
    """The text of ``tests/studies/NAME.toml`` (``fast``: a small Langevin ladder;
    ``grok``: an MLP on (a + b) mod 23; ``tiny-search``: a grokking search)."""
    return (TESTS / "studies" / f"{name}.toml").read_text(encoding="utf-8")


FAST, GROK, TINY_SEARCH = study_text("fast"), study_text("grok"), study_text("tiny-search")
#: The quickstart's ladder for the frailty tests: barrier, check grid, budget.
BARRIER, GRID, BUDGET = 0.0164, 10.0, 40_000.0


def ladder(rng, theta: float, n: int = 256) -> pd.DataFrame:
    """The quickstart's ladder (ΔE/T = 3 … 8, τ 1200 steps at ΔE/3), times on a grid of 10."""
    parts = []
    for r in (3, 4, 5, 6, 8):
        z = rng.gamma(1 / theta, theta, n) if theta > 0 else np.ones(n)
        t = np.ceil(rng.exponential(1.0, n) / (np.exp(3 - r) / 1200.0 * z) / GRID) * GRID
        parts.append(pd.DataFrame({"duration": np.minimum(t, BUDGET),
                                   "event": (t <= BUDGET).astype(int),
                                   "temperature": BARRIER / r}))
    return pd.concat(parts, ignore_index=True)
