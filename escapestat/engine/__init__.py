"""The trial engine: escape detection, the training loop over chunks, run directories,
memory checks and mid-chunk checkpoints."""

from __future__ import annotations

from ._chunks import (  # noqa: F401
    Chunk,
    plan_chunks,
    resolve_device,
)
from ._detector import (  # noqa: F401
    Decisions,
    EscapeDetector,
)
from ._hyper import (  # noqa: F401
    ReplicaSchedules,
)
from ._loop import (  # noqa: F401
    ChunkOutput,
    ChunkProgress,
    ChunkStarted,
    HyperSchedules,
    Progress,
    Watch,
    build_model,
    run_chunk,
    run_chunk_output,
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
    RunResult,
    run_study,
)

__all__ = [
    "available_bytes",
    "replica_bytes",
    "check_memory",
    "Chunk",
    "plan_chunks",
    "resolve_device",
    "Decisions",
    "EscapeDetector",
    "ReplicaSchedules",
    "now",
    "versions",
    "device_text",
    "RunStore",
    "ChunkCheckpoint",
    "ChunkStarted",
    "ChunkProgress",
    "Progress",
    "HyperSchedules",
    "build_model",
    "ChunkOutput",
    "run_chunk",
    "Watch",
    "run_chunk_output",
    "CENSORED",
    "DIVERGED",
    "ESCAPED",
    "ESCAPES",
    "REPLICAS",
    "UNTRAPPED",
    "RunResult",
    "run_study",
]
