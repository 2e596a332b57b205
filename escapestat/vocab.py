"""The names everything agrees on: replica statuses, the files of a run, search and sweep
folder, and run defaults. Only the standard library, so any layer (and a torch-free
command) can use it.
"""

from enum import Enum


class Status(str, Enum):
    """How a replica's run ended: the ``status`` column of ``replicas.csv`` (``escapes.csv``
    holds the first three). Members are the strings written in tables and compare equal
    to them."""

    ESCAPED = "escaped"
    CENSORED = "censored"
    DIVERGED = "diverged"  # a competing risk: censored where it diverged, never an escape
    UNTRAPPED = "untrapped"  # never at risk: not in the survival table
    UNFIT = "unfit"  # a grokking replica that never fitted its training set (measure = delay)
    RUNNING = "running"  # a monitored run not yet decided

    def __str__(self) -> str:  # "escaped", as in the tables (not "Status.ESCAPED")
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


ESCAPED, CENSORED, DIVERGED = Status.ESCAPED, Status.CENSORED, Status.DIVERGED
UNTRAPPED, UNFIT, RUNNING = Status.UNTRAPPED, Status.UNFIT, Status.RUNNING
#: The statuses of the survival table (``escapes.csv``).
SURVIVAL = (ESCAPED, CENSORED, DIVERGED)

# A run directory.
ESCAPES, REPLICAS, CURVES = "escapes.csv", "replicas.csv", "curves.csv"
RUN_JSON, STUDY_TOML, CHUNK_DIR = "run.json", "study.toml", "chunks"
PARTIAL = ".partial.pt"  # suffix of a chunk's mid-chunk state
LOCK, LOCK_PID = ".escapestat.lock", ".escapestat.pid"

# A search folder (``optimize``/``compare``) and a sweep folder.
OPTUNA_DB, TRIALS, COMPARE_CSV, COMPARE_JSON = "optuna.db", "trials.csv", "compare.csv", \
    "compare.json"
COMPARE_ARMS = "compare_arms.csv"
SWEEP_CSV, SWEEP_JSON, SWEEP_PNG = "sweep.csv", "sweep.json", "sweep.png"

#: Seconds between saves of an unfinished chunk's state (``run --checkpoint-every``).
CHECKPOINT_EVERY = 300.0
