"""Censored escape times with known truth, for tests, benchmarks and the worked example."""

from __future__ import annotations

import numpy as np
import pandas as pd


def censored_exponential(
    rate: float, n: int, budget: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n exponential escape times with the given rate, right-censored at ``budget``."""
    times = rng.exponential(1.0 / rate, size=n)
    events = (times <= budget).astype(int)
    return np.minimum(times, budget), events


def arrhenius_table(
    barrier: float,
    log_prefactor: float,
    temperatures,
    replicas: int,
    budget: float,
    seed: int = 0,
) -> pd.DataFrame:
    """An escape-record table with k(T) = exp(log_prefactor − barrier/T), censored at budget."""
    rng = np.random.default_rng(seed)
    frames = []
    for temperature in temperatures:
        rate = float(np.exp(log_prefactor - barrier / temperature))
        duration, event = censored_exponential(rate, replicas, budget, rng)
        frames.append(
            pd.DataFrame(
                {
                    "duration": duration,
                    "event": event,
                    "temperature": temperature,
                    "replica": np.arange(replicas),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
