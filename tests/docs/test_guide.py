"""The documentation's code is run: every ```bash and ```python block of the guide pages,
in order, page by page, as a reader would type them.

Each page runs in its own empty folder that sees the repository's ``studies/`` (as a
reader in a checkout does), with ``escapestat`` and ``python`` from this environment. A
block preceded by ``<!-- not run: REASON -->`` is shown, not run (hours of compute, a
fragment of a larger script that a test runs elsewhere); ```console, ```toml and ```json
blocks are output and input files, never run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "docs" / "index.md", *(ROOT / "docs" / "guide").glob("*.md")])
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>[a-z]*)[^\n]*\n(?P<code>.*?)\n```", re.S)
NOT_RUN = re.compile(r"<!-- not run: \S.* -->")


def blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, code, run?) for every fenced block of a page, in order."""
    out = []
    for m in FENCE.finditer("\n" + text):
        out.append((m["lang"], m["code"], not NOT_RUN.fullmatch(m["before"].strip())))
    return out


def test_fences_are_read():
    text = ("x\n```bash\necho 1\n```\n<!-- not run: hours -->\n```python\nprint(2)\n```\n"
            "```console\n$ y\n```\n")
    assert blocks(text) == [("bash", "echo 1", True), ("python", "print(2)", False),
                            ("console", "$ y", True)]


def test_every_guide_page_has_code_that_runs():
    for page in PAGES:
        langs = [lang for lang, _, run in blocks(page.read_text()) if run]
        assert {"bash", "python"} & set(langs), f"{page.name}: no runnable snippet"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_snippets_run(page, tmp_path):
    (tmp_path / "studies").symlink_to(ROOT / "studies")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"],
           "MPLBACKEND": "Agg", "PYTHONWARNINGS": "error::DeprecationWarning:escapestat"}
    for i, (lang, code, run) in enumerate(blocks(page.read_text())):
        if not run or lang not in ("bash", "python"):
            continue
        argv = (["bash", "-euo", "pipefail", "-c", code] if lang == "bash"
                else [sys.executable, "-c", code])
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, (
            f"{page.relative_to(ROOT)} block {i} ({lang}) exited {done.returncode}:\n{code}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
