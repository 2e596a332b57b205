"""Study files (no torch needed to read one): the schema, its checks and schedules as values."""

from __future__ import annotations

from ._conditions import Condition, conditions  # noqa: F401
from ._escape_rule import (  # noqa: F401
    EscapeRule,
)
from ._grad_filter import (  # noqa: F401
    KINDS,
    check_alpha,
    check_grad_filter,
    check_lamb,
    check_window,
)
from ._model_spec import (  # noqa: F401
    Bad,
    ModelSpec,
)
from ._registry import (  # noqa: F401
    DEFAULT_KIND,
    MODELS,
    Entry,
    kinds,
    model_class,
    spec_class,
    task_kinds,
)
from ._schedules import (  # noqa: F401
    SHAPES,
    Constant,
    Cosine,
    Cyclic,
    Exponential,
    Linear,
    Logarithmic,
    Pulse,
    Schedule,
    Steps,
    Warmup,
    parse_ladder,
    parse_schedule,
)
from ._sections import (  # noqa: F401
    DataSpec,
    DynamicsSpec,
    EscapeSpec,
    GradFilterSpec,
    InitSpec,
    OptimizerSpec,
    RunSpec,
    TaskSpec,
)
from ._study import (  # noqa: F401
    Study,
    load_study,
    model_keys,
    parse_study,
    read_toml,
    study_from_dict,
)
from ._task import (  # noqa: F401
    OPERATION_NAMES,
    table_size,
    train_size,
)

__all__ = [
    "EscapeRule",
    "check_lamb",
    "check_alpha",
    "check_window",
    "KINDS",
    "check_grad_filter",
    "Bad",
    "ModelSpec",
    "Entry",
    "MODELS",
    "DEFAULT_KIND",
    "kinds",
    "spec_class",
    "model_class",
    "task_kinds",
    "Schedule",
    "Constant",
    "Steps",
    "Linear",
    "Exponential",
    "Cosine",
    "Warmup",
    "Pulse",
    "Logarithmic",
    "Cyclic",
    "SHAPES",
    "parse_schedule",
    "parse_ladder",
    "OPERATION_NAMES",
    "train_size",
    "table_size",
    "model_keys",
    "TaskSpec",
    "OptimizerSpec",
    "DataSpec",
    "InitSpec",
    "GradFilterSpec",
    "DynamicsSpec",
    "EscapeSpec",
    "RunSpec",
    "Study",
    "parse_study",
    "read_toml",
    "study_from_dict",
    "load_study",
    "Condition",
    "conditions",
]
