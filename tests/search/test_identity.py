"""A search remembers the study it was made from: a changed file is refused, by name."""

from __future__ import annotations

import json

from testdata import TINY_SEARCH as STUDY


def test_a_changed_study_file_is_a_different_search(cli, tmp_path):
    path, out = tmp_path / "tiny.toml", tmp_path / "out"
    path.write_text(STUDY.replace("trials = 2", "trials = 1"), encoding="utf-8")
    code, _, err = cli("optimize", path, "--out", out, "--device", "cpu", "--no-compare")
    assert code == 0, err
    # More trials is the same search, resumed: one more trial per search.
    path.write_text(STUDY, encoding="utf-8")
    code, stdout, err = cli("optimize", path, "--out", out, "--device", "cpu", "--no-compare",
                            "--json")
    assert code == 0, err
    assert json.loads(stdout)["n_trials"] == 2
    # A moved range or a changed budget is not: one line naming what changed.
    moved = STUDY.replace('"dynamics.lr" = {low = 1e-2, high = 3e-2',
                          '"dynamics.lr" = {low = 1e-2, high = 5e-2')
    for text, what in ((moved, "search.space.dynamics.lr.high"),
                       (STUDY.replace("max_steps = 600", "max_steps = 700"), "run.max_steps")):
        path.write_text(text, encoding="utf-8")
        for command in ("optimize", "compare"):
            code, _, err = cli(command, path, "--out", out, "--device", "cpu")
            assert code == 1, err
            assert len(err.strip().splitlines()) == 1, err
            assert "holds a different study" in err and what in err, err
    # The study as first made still resumes, and its trials are all there.
    path.write_text(STUDY, encoding="utf-8")
    code, stdout, err = cli("optimize", path, "--out", out, "--device", "cpu", "--no-compare",
                            "--json")
    assert code == 0 and json.loads(stdout)["n_trials"] == 2, err
