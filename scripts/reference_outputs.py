"""Reference outputs for a change that must not change behaviour (the 1.0 restructuring).

Runs the reference jobs into OUT and writes OUT/manifest.json: a SHA-256 per output, with
what depends on the clock (seconds, wall-clock ratios, the worker's host:pid, timestamps)
left out. Record on the commit before the change, then check after it:

    python scripts/reference_outputs.py /tmp/ref-before
    python scripts/reference_outputs.py /tmp/ref-after --check /tmp/ref-before/manifest.json

Jobs: the quickstart's tables; grok-modadd with 24 replicas; a small search and its
compare (scripts/reference/grok-search-tiny.toml); the sweep sweep-three-modes; and the
``--json`` of fit, arrhenius and regress on studies/examples/escapes.csv. About 5 minutes
on 2 cores. Results are identical on one machine; across CPUs the last bits may differ.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "studies" / "examples" / "escapes.csv"
#: Columns and keys that measure the clock or the process, not the result.
CLOCK_COLUMNS = {"seconds", "worker"}
CLOCK_KEYS = ("seconds", "wall_ratio", "started", "finished", "resumed", "versions", "out")


def escapestat(*args: str) -> str:
    """Run the CLI as a user would; its stdout (an error stops the script)."""
    done = subprocess.run([sys.executable, "-c", "from escapestat_cli.app import main; main()",
                           *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"escapestat {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def _without_clock(obj):
    if isinstance(obj, dict):
        return {k: _without_clock(v) for k, v in obj.items()
                if not any(k.startswith(c) or c in k for c in CLOCK_KEYS)}
    if isinstance(obj, list):
        return [_without_clock(v) for v in obj]
    return obj


def _csv_without_clock(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    keep = [i for i, name in enumerate(rows[0]) if name not in CLOCK_COLUMNS]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[r[i] for i in keep] for r in rows])
    return out.getvalue()


def digest(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        text = json.dumps(_without_clock(json.loads(text)), sort_keys=True)
    elif path.suffix == ".csv":
        text = _csv_without_clock(text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record(out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    escapestat("run", "studies/quickstart.toml", "--out", str(out / "quickstart"))
    escapestat("run", "studies/grok-modadd.toml", "--replicas", "24", "--out", str(out / "grok"))
    escapestat("optimize", "scripts/reference/grok-search-tiny.toml", "--out",
               str(out / "search"))
    escapestat("sweep", "studies/sweep-three-modes.toml", "--out", str(out / "sweep"))
    for name, args in {"fit": ["fit", str(EXAMPLE), "--group-col", "temperature"],
                       "arrhenius": ["arrhenius", str(EXAMPLE)],
                       "regress": ["regress", str(EXAMPLE), "log(temperature)"]}.items():
        (out / f"{name}.json").write_text(escapestat(*args, "--json"), encoding="utf-8")
    files = [out / "quickstart" / "escapes.csv", out / "quickstart" / "replicas.csv",
             out / "grok" / "escapes.csv", out / "grok" / "replicas.csv",
             out / "grok" / "curves.csv", out / "search" / "trials.csv",
             out / "search" / "compare.json", out / "search" / "compare_arms.csv",
             out / "sweep" / "sweep.csv", out / "sweep" / "sweep.json",
             out / "fit.json", out / "arrhenius.json", out / "regress.json"]
    manifest = {str(p.relative_to(out)): digest(p) for p in files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", type=Path, help="a manifest.json recorded before")
    args = parser.parse_args()
    manifest = record(args.out)
    if args.check is None:
        print(f"recorded {len(manifest)} outputs in {args.out / 'manifest.json'}")
        return
    before = json.loads(args.check.read_text(encoding="utf-8"))
    differ = [k for k in sorted(set(before) | set(manifest)) if before.get(k) != manifest.get(k)]
    for k in differ:
        print(f"DIFFERS: {k}")
    print(f"{len(manifest) - len(differ)} of {len(manifest)} outputs identical")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
