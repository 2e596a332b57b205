"""The ``[dynamics] grad_filter`` table (Grokfast's filters) checked without torch; the
filters themselves are ``models._grad_filter``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from escapestat.errors import EscapestatError, FieldError, build_keyed, did_you_mean


class _Invalid(FieldError):
    """A bad parameter; ``check_grad_filter`` re-raises it naming where it was."""

    def __init__(self, key: str, why: str):
        super().__init__("grad_filter", key, why)


def _number(key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _Invalid(key, f"must be a finite number, got {v!r}")
    return float(v)


def check_lamb(lamb) -> float:
    """λ as a float ≥ 0."""
    lamb = _number("lamb", lamb)
    if lamb < 0:
        raise _Invalid("lamb", f"must be ≥ 0, got {lamb}")
    return lamb


def check_alpha(alpha) -> float:
    """The EMA's α as a float in [0, 1)."""
    alpha = _number("alpha", alpha)
    if not 0 <= alpha < 1:
        raise _Invalid("alpha", f"must be in [0, 1), got {alpha}")
    return alpha


def check_window(window) -> int:
    """The moving average's window as an int ≥ 1."""
    if isinstance(window, float) and window.is_integer():
        window = int(window)
    if isinstance(window, bool) or not isinstance(window, int):
        raise _Invalid("window", f"must be an integer, got {window!r}")
    if window < 1:
        raise _Invalid("window", f"must be ≥ 1, got {window}")
    return window


@dataclass(frozen=True)
class _Ema:
    alpha: float
    lamb: float

    def __post_init__(self):
        check_alpha(self.alpha)
        check_lamb(self.lamb)


@dataclass(frozen=True)
class _Ma:
    window: int
    lamb: float

    def __post_init__(self):
        check_window(self.window)
        check_lamb(self.lamb)


#: kind → (its parameter check, its keys in order).
KINDS = {"ema": (_Ema, ("alpha", "lamb")), "ma": (_Ma, ("window", "lamb"))}


def check_grad_filter(spec, where: str) -> None:
    """One error line naming ``where`` and the key unless ``spec`` is ``{kind = "ema",
    alpha, lamb}`` or ``{kind = "ma", window, lamb}`` with valid values."""
    if not isinstance(spec, dict):
        raise EscapestatError(f"{where} must be a table such as "
                              f'{{kind = "ema", alpha = 0.98, lamb = 2.0}}, got {spec!r}')
    kind = spec.get("kind")
    if kind not in KINDS:
        raise EscapestatError(f"{where}.kind must be 'ema' or 'ma', got {kind!r}"
                              f"{did_you_mean(str(kind), KINDS)}")
    cls, keys = KINDS[kind]
    build_keyed(cls, keys, spec, where, "kind")
