"""Escape with divergence as a competing event: the Aalen–Johansen incidence of escape.

For a rate (``fit``, ``run``) a diverged replica is censored where it diverged: it was at
risk until then. For a search objective or an arm comparison it is a failure: it can
never escape, and a Kaplan–Meier curve that censors it assumes it would have escaped like
the others (8 escapes at 100 and 8 divergences at 50 would score like 16 escapes). The
cumulative incidence of escape F(t) counts it as never escaping; with no divergence it is
1 − KM. Causes: 0 censored (still trapped at the end), 1 escaped, 2 diverged.
"""

from __future__ import annotations

import warnings

import numpy as np

from escapestat.errors import EscapestatError
from escapestat.stats._survival import HALF_TOL, LEVEL

CENSOR, ESCAPE, DIVERGE = 0, 1, 2
_BLOCK = 1 << 22  # resamples × replicas held at once by the bootstrap (int64: 32 MiB)


def check_causes(durations, cause, name: str = "arm") -> tuple[np.ndarray, np.ndarray]:
    """Validated float durations (finite, > 0) and int causes (0, 1 or 2)."""
    d = np.asarray(durations, dtype=float)
    c = np.asarray(cause)
    if d.ndim != 1 or d.size == 0:
        raise EscapestatError(f"{name}: durations must be a non-empty 1-D array")
    if c.shape != d.shape:
        raise EscapestatError(f"{name}: causes have shape {c.shape}, durations {d.shape}; "
                              f"they must match")
    if not np.all(np.isfinite(d) & (d > 0)):
        raise EscapestatError(f"{name}: durations must be finite and > 0 (NaN, inf, ≤ 0 found)")
    if c.dtype.kind not in "biuf" or not np.all(np.isin(c, (CENSOR, ESCAPE, DIVERGE))):
        raise EscapestatError(f"{name}: causes must be 0 (censored), 1 (escaped) or "
                              f"2 (diverged)")
    return d, c.astype(int)


def check_bootstrap(n_bootstrap, level: float) -> None:
    """A positive whole number of resamples and a coverage level in (0, 1)."""
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 1:
        raise EscapestatError(f"n_bootstrap must be a positive integer, got {n_bootstrap}")
    if not 0 < level < 1:
        raise EscapestatError(f"level must be in (0, 1), got {level}")


def _weighted_cif(durations: np.ndarray, cause: np.ndarray, counts: np.ndarray):
    """Distinct times t_j and the escape incidence F at them under each row of integer
    ``counts`` (b, n): row w holds replica i w_i times (w = 1: the data as they are).

    F(t) = Σ_{t_j ≤ t} S(t_j−) d1_j / n_j, S the all-cause Kaplan–Meier (escapes and
    divergences both end a replica's time at risk), d1_j the escapes at t_j, n_j at risk.
    """
    order = np.argsort(durations, kind="stable")
    t, c, w = durations[order], cause[order], counts[:, order]
    times, first = np.unique(t, return_index=True)
    total = np.add.reduceat(w, first, axis=1)
    escapes = np.add.reduceat(w * (c == ESCAPE), first, axis=1).astype(float)
    ended = np.add.reduceat(w * (c != CENSOR), first, axis=1).astype(float)
    at_risk = (w.sum(axis=1, keepdims=True) - np.cumsum(total, axis=1) + total).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        h_escape = np.where(at_risk > 0, escapes / at_risk, 0.0)
        h_all = np.where(at_risk > 0, ended / at_risk, 0.0)
    surv = np.cumprod(1.0 - h_all, axis=1)
    before = np.concatenate([np.ones((w.shape[0], 1)), surv[:, :-1]], axis=1)
    return times, np.cumsum(before * h_escape, axis=1), surv


def _medians(times: np.ndarray, cif: np.ndarray) -> np.ndarray:
    """First time each row's incidence reaches ½ (HALF_TOL as for KM medians), else +inf."""
    hit = cif >= 0.5 - HALF_TOL
    return np.where(hit.any(axis=1), times[hit.argmax(axis=1)], np.inf)


class EscapeIncidence:
    r"""Cumulative incidence of escape with divergence competing (Aalen–Johansen).

    .. math::
        \hat S(t) = \prod_{t_j \le t}\Bigl(1 - \frac{d^{(1)}_j + d^{(2)}_j}{n_j}\Bigr),
        \qquad
        \hat F(t) = \sum_{t_j \le t} \hat S(t_{j-1}) \frac{d^{(1)}_j}{n_j}

    over the distinct times t_j, with n_j replicas at risk (duration ≥ t_j), d⁽¹⁾ escapes
    and d⁽²⁾ divergences there; a replica censored at t_j is at risk at t_j. The median
    is the first t_j with F ≥ ½ (to 1e-9, as ``KaplanMeierMedian``), None if F stays
    below ½ — which it does whenever half the replicas or more diverge. The restricted
    mean time not yet escaped ∫₀^h (1 − F) counts a diverged replica as trapped to h.

    Attributes
    ----------
    times_ : distinct times t_j.
    cif_ : F̂ at ``times_`` (right-continuous steps).
    diverged_cif_ : the incidence of divergence at ``times_``.
    n_, escaped_, diverged_, censored_ : replicas, and how many ended each way.
    median_ : the median time to escape, or None when F̂ never reaches ½.
    """

    def fit(self, durations, cause) -> EscapeIncidence:
        """Fit to each replica's time and how it ended; returns self.

        Parameters
        ----------
        durations : steps (> 0) at which each replica escaped, diverged or was censored.
        cause : 0 censored, 1 escaped, 2 diverged.
        """
        d, c = check_causes(durations, cause)
        times, cif, surv = _weighted_cif(d, c, np.ones((1, d.size), dtype=np.int64))
        self.times_, self.cif_ = times, cif[0]
        self.diverged_cif_ = 1.0 - surv[0] - self.cif_
        self.n_ = int(d.size)
        self.escaped_, self.diverged_ = int((c == ESCAPE).sum()), int((c == DIVERGE).sum())
        self.censored_ = self.n_ - self.escaped_ - self.diverged_
        m = _medians(times, cif)[0]
        self.median_ = float(m) if np.isfinite(m) else None
        return self

    def restricted_mean(self, horizon: float) -> float:
        """∫₀^horizon (1 − F̂(t)) dt; equals the Kaplan–Meier RMST when none diverged."""
        if not 0 < horizon < np.inf:
            raise EscapestatError(f"horizon must be finite and > 0, got {horizon}")
        keep = self.times_ < horizon
        knots = np.concatenate(([0.0], self.times_[keep], [horizon]))
        heights = np.concatenate(([1.0], 1.0 - self.cif_[keep]))
        return float(np.sum(np.diff(knots) * heights))

    def fractions(self) -> dict[str, float]:
        """Fractions of the replicas that escaped, diverged and were censored."""
        return {"escaped": self.escaped_ / self.n_, "diverged": self.diverged_ / self.n_,
                "censored": self.censored_ / self.n_}


def bootstrap_distribution(sizes: tuple[int, ...], statistic, n_bootstrap: int,
                           rng: np.random.Generator) -> np.ndarray:
    """``statistic(*counts)`` over ``n_bootstrap`` resamples from ``scipy.stats.bootstrap``,
    each group's replicas redrawn with replacement, the groups independently.

    ``statistic`` receives one integer (b, n) matrix per group: row w holds replica i w_i
    times. scipy resamples replica indices in batches (memory bounded); the interval is
    taken by the caller from this distribution, as its values may be ±∞ or NaN (a median
    not reached), where scipy's interpolated percentiles are undefined.
    """
    from scipy import stats

    def on_indices(*drawn, axis=-1):
        counts = []
        for n, idx in zip(sizes, drawn, strict=True):
            idx = np.atleast_2d(idx)
            b = idx.shape[0]
            flat = (idx + n * np.arange(b)[:, None]).ravel()
            counts.append(np.bincount(flat, minlength=b * n).reshape(b, n))
        return statistic(*counts)

    # scipy resamples at least two observations; one replica drawn twice is the same KM.
    data = tuple(np.arange(n) if n > 1 else np.zeros(2, dtype=int) for n in sizes)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # scipy's own (unused) interval of ±∞ / NaN values
        result = stats.bootstrap(
            data, on_indices, n_resamples=int(n_bootstrap), vectorized=True, paired=False,
            batch=max(1, _BLOCK // max(sizes)), method="percentile", rng=rng)
    return np.asarray(result.bootstrap_distribution, dtype=float)


def weighted_medians(durations: np.ndarray, cause: np.ndarray, counts: np.ndarray):
    """Incidence medians under each row of ``counts``, +inf where F stays below ½."""
    return _medians(*_weighted_cif(durations, cause, counts)[:2])


def bounded(x: float) -> float | None:
    """``x`` if it is finite and > 0, else None ("not bounded")."""
    return float(x) if 0 < x < np.inf else None


def incidence_median_ci(durations, cause, n_bootstrap: int = 2000, level: float = LEVEL,
                        seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile-bootstrap CI of the incidence median (replicas resampled); a side is
    None when not bounded (a resample whose F stays below ½ has median +∞)."""
    d, c = check_causes(durations, cause)
    check_bootstrap(n_bootstrap, level)
    boot = bootstrap_distribution((d.size,), lambda w: weighted_medians(d, c, w),
                                  int(n_bootstrap), np.random.default_rng(seed))
    alpha = 1.0 - level
    return (bounded(np.quantile(boot, alpha / 2, method="lower")),
            bounded(np.quantile(boot, 1 - alpha / 2, method="higher")))
