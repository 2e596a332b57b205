"""The trial engine: escape detection, the training loop over chunks, run directories,
memory checks and mid-chunk checkpoints."""

from __future__ import annotations

from ._detector import (  # noqa: F401
    Decisions,
    EscapeDetector,
)
from ._hyper import (  # noqa: F401
    ReplicaSchedules,
)
from ._memory import (  # noqa: F401
    available_bytes,
    check_memory,
    replica_bytes,
)
from ._storage import (  # noqa: F401
    ChunkCheckpoint,
    RunStore,
    device_text,
    now,
    versions,
)
from ._trials import (  # noqa: F401
    CENSORED,
    DIVERGED,
    ESCAPED,
    ESCAPES,
    REPLICAS,
    UNTRAPPED,
    Chunk,
    ChunkProgress,
    ChunkStarted,
    RunResult,
    plan_chunks,
    resolve_device,
    run_chunk,
    run_study,
)

__all__ = [
    "Decisions",
    "EscapeDetector",
    "ReplicaSchedules",
    "available_bytes",
    "replica_bytes",
    "check_memory",
    "now",
    "versions",
    "device_text",
    "RunStore",
    "ChunkCheckpoint",
    "CENSORED",
    "DIVERGED",
    "ESCAPED",
    "ESCAPES",
    "REPLICAS",
    "UNTRAPPED",
    "Chunk",
    "ChunkProgress",
    "ChunkStarted",
    "RunResult",
    "plan_chunks",
    "resolve_device",
    "run_chunk",
    "run_study",
]
