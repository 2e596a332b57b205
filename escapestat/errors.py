"""The one exception type for domain errors, and the helpers that word them for study files."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class EscapestatError(Exception):
    """A problem with the user's input or data, reported as one line and exit status 1."""


class FieldError(EscapestatError):
    """A bad field of a keyed table (a schedule, a filter); its parser re-raises it with
    the place in the study file (``build_keyed``)."""

    def __init__(self, owner: str, key: str, why: str):
        super().__init__(f"{owner}: {key} {why}")
        self.key, self.why = key, why


def did_you_mean(key: str, allowed) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or nothing."""
    close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_keyed(cls, keys: Sequence[str], spec: dict, where: str, tag: str):
    """``cls(*values)`` from a TOML table holding exactly ``keys`` besides its ``tag`` key.

    An unknown key (with a suggestion), a missing key, or a bad value (``FieldError``) is
    one error line naming ``where`` and the key.
    """
    for key in spec:
        if key != tag and key not in keys:
            raise EscapestatError(
                f"{where}: unknown key {key!r} for {tag} {spec[tag]!r}"
                f"{did_you_mean(key, keys)}; its keys are {', '.join(keys)}")
    missing = [k for k in keys if k not in spec]
    if missing:
        raise EscapestatError(f"{where}: {tag} {spec[tag]!r} needs {', '.join(map(repr, missing))}")
    try:
        return cls(*(spec[k] for k in keys))
    except FieldError as exc:
        raise EscapestatError(f"{where}.{exc.key} {exc.why}") from None
