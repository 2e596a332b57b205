"""The names everything agrees on: replica statuses, the files of a run, search and sweep
folder, and run defaults. No imports, so any layer (and a torch-free command) can use it.
"""

# Statuses of a replica in ``replicas.csv`` (``escapes.csv`` holds the first three).
ESCAPED, CENSORED, DIVERGED, UNTRAPPED = "escaped", "censored", "diverged", "untrapped"
UNFIT = "unfit"  # a grokking replica that never fitted its training set (``measure = delay``)

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
