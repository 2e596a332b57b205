"""Start-up of the statistics commands: `escapestat --help` and `fit` on the example table,
against `python -c "import lifelines"` on the same machine.

Why: a researcher runs `escapestat fit table.csv` many times; before 0.7.0's lazy imports
every command loaded torch and optuna (the engine and the search) first. Target (issue
20): `fit` on the example within 1.5× of importing lifelines, which `fit` needs anyway.

What: each command is a fresh process (``sys.executable``), run ``--repeats`` times in
turn (lifelines, --help, fit, lifelines, …) so that drift hits all alike; the figure is
the median wall time. The last line is one JSON object.

    python benchmarks/cli_startup.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "studies" / "examples" / "escapes.csv"
CLI = "from escapestat_cli.app import main; main()"
COMMANDS = {
    "import lifelines": [sys.executable, "-c", "import lifelines"],
    "escapestat --help": [sys.executable, "-c", CLI, "--help"],
    "escapestat fit (example)": [sys.executable, "-c", CLI, "fit", str(EXAMPLE),
                                 "--group-col", "temperature"],
}
TARGET = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for cmd in COMMANDS.values():  # warm the file cache once, untimed
        subprocess.run(cmd, capture_output=True, check=True, cwd=ROOT)
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True, cwd=ROOT)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["import lifelines"]
    print(f"median wall time of {args.repeats} fresh processes each "
          f"(python {sys.version.split()[0]})")
    for name, t in median.items():
        print(f"  {name:<26} {t:6.2f} s   {t / base:5.2f}× import lifelines")
    ratio = median["escapestat fit (example)"] / base
    print(f"fit within {TARGET}× of import lifelines: {'met' if ratio <= TARGET else 'not met'} "
          f"({ratio:.2f}×)")
    print(json.dumps({"lifelines_import_s": round(base, 3),
                      "help_s": round(median["escapestat --help"], 3),
                      "fit_example_s": round(median["escapestat fit (example)"], 3),
                      "fit_vs_lifelines": round(ratio, 2)}))


if __name__ == "__main__":
    main()
