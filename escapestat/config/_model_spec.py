"""What the study loader needs to know about a kind of replica model, without torch.

Each kind declares a frozen dataclass whose fields are its ``[model]`` keys (with their
defaults) and whose class attributes are its capabilities; ``registry`` maps the kind's
name to it. The loader, the config hash, the memory check and the search read these
and never name a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

Bad = Callable[[str, str], Any]  # bad(key, why) raises one error line naming the key


@dataclass(frozen=True)
class ModelSpec:
    """Base of every kind's ``[model]`` spec.

    Class attributes (capabilities, with defaults):

    - ``kind``: the name in ``[model] kind`` (read from the registry when the class is made);
    - ``learns_task``: the model learns modular arithmetic (``[task]``, ``[optimizer]``),
      its order parameter is test accuracy, weight decay takes β's slot and there is no
      theory barrier; else it is a deep linear trap with a teacher;
    - ``escape_defaults``: ``[escape]`` defaults that differ for this kind;
    - ``hash_kind``: whether the kind's name enters the config hash (the deep linear
      nets predate kinds: leaving it out keeps their run directories' hashes).
    """

    kind: ClassVar[str] = ""
    learns_task: ClassVar[bool] = False
    escape_defaults: ClassVar[dict[str, Any]] = {}
    hash_kind: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A spec knows its kind as soon as its module is imported — also in a process that
        # only unpickles a study (a Dask worker) — from the registry, which names it once.
        super().__init_subclass__(**kwargs)
        from escapestat.config._registry import kind_of

        cls.kind = kind_of(cls)

    def check(self, study, bad: Bad) -> None:
        """Range and consistency checks of a study with this model (``bad`` to refuse)."""

    def replica_bytes(self, study) -> int:
        """A lower bound on the memory one replica needs (parameters ×4, data, one batch)."""
        raise NotImplementedError


class LinearTrapSpec(Protocol):
    """What the config reads of a deep linear trap's ``[model]`` (a kind that does not
    learn a task): ``models.deep_linear.spec.DeepLinearSpec``, which config cannot import."""

    @property
    def depth(self) -> int: ...

    @property
    def strengths(self) -> tuple[float, ...]: ...

    @property
    def trapped_index(self) -> int: ...

    @property
    def widths(self) -> list[int]: ...


def linear_trap(spec: ModelSpec) -> LinearTrapSpec:
    """``spec`` as a deep linear trap's, for a study whose model does not learn a task."""
    return cast(LinearTrapSpec, spec)
