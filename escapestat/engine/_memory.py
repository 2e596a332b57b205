"""A lower bound on the memory a run needs, checked before anything is allocated.

Sizes that pass validation can still ask for more than any machine has: ``replicas =
1e9`` (the chunk plan alone is GBs), ``p = 50000`` (each replica's split of the p² pairs
is 40 GB), ``width = 1e8``. Each estimate counts only what must exist — the chunk plan,
parameters with their gradient and optimizer moments, each replica's data or split, the
activations of one training batch — so it never refuses a run that would fit; one that
cannot is refused with one line naming the need, the machine's memory and the key to
lower, instead of swapping or being killed.
"""

from __future__ import annotations

import os

from escapestat.config._study import Study
from escapestat.errors import EscapestatError

_PLAN_BYTES = 120  # one (condition, replica) pair of the chunk plan: two Python ints


def available_bytes() -> int | None:
    """Memory available to a new allocation (``MemAvailable``), else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def replica_bytes(study: Study) -> int:
    """Bytes one replica needs at least: parameters ×4 (value, gradient, two moments),
    its data or split, one training batch's activations (the model kind's spec says)."""
    return study.model.replica_bytes(study)


def check_memory(study: Study, n_conditions: int) -> None:
    """Refuse a run whose chunk plan or largest chunk cannot fit in this machine's memory."""
    have = available_bytes()
    if have is None:
        return
    total = study.run.replicas * n_conditions
    chunk = min(study.run.chunk_replicas, total)
    plan = total * _PLAN_BYTES
    need = plan + chunk * replica_bytes(study)
    if need <= have:
        return
    if plan > have:
        raise EscapestatError(
            f"[run] replicas = {study.run.replicas:,} × {n_conditions} conditions: planning "
            f"the chunks alone needs about {_gb(plan)}, and {_gb(have)} is available; "
            f"lower [run] replicas")
    per = replica_bytes(study)
    fits = max((have - plan) // max(per, 1), 0)
    lower = (f"lower [run] chunk_replicas (to about {fits:,})" if fits >= 1
             else "one replica does not fit: lower the model or task sizes")
    raise EscapestatError(
        f"a chunk of {chunk:,} replicas needs at least {_gb(need)} ({_gb(per)} per replica "
        f"from the model and task sizes) and {_gb(have)} is available; {lower}")


def _gb(n: float) -> str:
    return f"{n / 2**30:,.3g} GiB" if n >= 2**27 else f"{n / 2**20:,.3g} MiB"
