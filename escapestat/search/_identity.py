"""What makes two searches the same, kept with the Optuna study so a changed file is refused.

Re-running ``optimize`` on existing storage with a changed study file (a range moved, the
budget changed) would mix trials of two questions and report an old best outside the new
range. The study (normalised, as ``run`` hashes it) and the ``[search]`` keys that shape
trials are stored as user attributes of the Optuna study when it is created; a later
worker or ``compare`` with a different identity is refused, naming what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import optuna

from escapestat.config._study import Study
from escapestat.errors import EscapestatError
from escapestat.search._space import SearchSpec

#: ``[search]`` keys that change neither which trials a search runs nor how they score.
NOT_IDENTITY = ("trials", "top", "compare_replicas", "compare_seed", "constant_search",
                "baselines")
#: Where a search keeps its identity (user attributes of the Optuna study).
IDENTITY_ATTR, HASH_ATTR = "escapestat_search", "escapestat_search_hash"


def search_identity(base: Study, spec: SearchSpec) -> dict[str, Any]:
    """The study without its description, and the ``[search]`` keys that shape trials,
    flattened to dotted keys."""
    study = base.as_dict()
    study.pop("description", None)
    search = {k: v for k, v in dataclasses.asdict(spec).items() if k not in NOT_IDENTITY}
    search["space"] = {p.path: {k: v for k, v in dataclasses.asdict(p).items()
                                if k != "path" and v not in (None, False)}
                       for p in spec.space}
    return _flatten({**study, "search": search})


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(node, default=list))}


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def check_identity(study: optuna.Study, identity: dict[str, Any], where: str = "") -> None:
    """Refuse a search created from a different study, naming what changed; the same one
    resumes. A study without an identity (just created) takes this one."""
    new = identity_hash(identity)
    old = study.user_attrs.get(HASH_ATTR)
    if old is None:
        study.set_user_attr(IDENTITY_ATTR, identity)
        study.set_user_attr(HASH_ATTR, new)
        return
    if old == new:
        return
    before = study.user_attrs.get(IDENTITY_ATTR, {})
    changed = sorted(k for k in set(before) | set(identity)
                     if before.get(k, "—") != identity.get(k, "—"))
    shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4
                                      else "")
    raise EscapestatError(
        f"search {study.study_name!r}{where} holds a different study ({shown or 'the study'} "
        f"changed; config hash {old} ≠ {new}); choose another --out or --study-name")
