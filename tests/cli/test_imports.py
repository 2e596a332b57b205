"""The statistics commands on a table import neither torch nor optuna (fast start-up)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from testdata import ROOT

EXAMPLE = ROOT / "studies" / "examples" / "escapes.csv"
PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('LOADED', sorted(m for m in ('torch', 'optuna') "
    "if m in sys.modules), file=sys.stderr))\n"
    "from escapestat_cli.app import main\n"
    "main()\n"
)


@pytest.mark.parametrize("args", [
    ["fit", str(EXAMPLE), "--group-col", "temperature"],
    ["arrhenius", str(EXAMPLE)],
    ["regress", str(EXAMPLE), "log(temperature)"],
    ["report", str(EXAMPLE), "--bootstrap", "49", "--out", "REPORT"],
    ["--help"],
], ids=lambda a: a[0])
def test_no_torch_no_optuna(args, tmp_path):
    args = [str(tmp_path / "r.html") if a == "REPORT" else a for a in args]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stderr, done.stderr[-400:]


def test_the_probe_sees_torch_where_it_is_loaded():
    """``run`` needs the engine: the same probe reports torch there (so it can fail)."""
    done = subprocess.run([sys.executable, "-c", PROBE, "run", "no-such.toml"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "LOADED ['torch']" in done.stderr
