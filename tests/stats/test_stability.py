"""No escapes within the budget is "absorbing" only when the engine's run shows the trap
stable: a grokking net still climbing at the budget is "not reached", the paper's SGD
trap (which never moves) is still "absorbing"."""

from __future__ import annotations

import numpy as np
from testdata import ROOT

from escapestat.config._study import parse_study
from escapestat.engine._trials import run_study
from escapestat.stats._stability import Q_END, Q_MID, Q_MID_STEP
from escapestat.stats._summary import run_summary
from escapestat.stats._verdict import ABSORBING, NOT_REACHED

STUDIES = ROOT / "studies"


def _run(tmp_path, name: str, replace: dict[str, str], replicas: int, max_steps: int):
    text = (STUDIES / name).read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    study = parse_study(text, name).with_overrides(replicas=replicas, max_steps=max_steps)
    result = run_study(study, tmp_path / "run", device="cpu")
    summary = run_summary(result.replicas, n_bootstrap=49, grid=study.escape.check_every,
                          budget=max_steps, threshold=result.meta["threshold"])
    return result, summary.as_dict()["conditions"]


def test_a_grokking_run_still_climbing_at_the_budget_is_not_reached(tmp_path):
    """``run studies/grok-modadd.toml --replicas 8 --max-steps 3000``, B = 16: test accuracy
    ≈ 0.58 and rising at 3,000 (it groks near 3,700 with a longer budget)."""
    result, (row,) = _run(tmp_path, "grok-modadd.toml",
                          {'batch_size = [16, 64, "full"]': "batch_size = 16"}, 8, 3000)
    df = result.replicas
    assert df["event"].sum() == 0
    assert (df[Q_MID_STEP] == 1500).all() and np.isfinite(df[Q_END]).all()
    assert (df[Q_END] > df[Q_MID]).all()
    assert row["verdict"] == NOT_REACHED, row["verdict_reason"]
    assert "still rising" in row["verdict_reason"] and "--max-steps" in row["verdict_reason"]


def test_the_paper_sgd_trap_that_never_moves_is_still_absorbing(tmp_path):
    """The hottest SGD condition of ``paper-sgd-trap.toml`` (β_run 0.03, lr 0.08, B 64)."""
    result, (row,) = _run(tmp_path, "paper-sgd-trap.toml", {
        "lr = [0.0005, 0.005, 0.08]": "lr = 0.08",
        "batch_size = [64, 512]": "batch_size = 64",
        "beta = [0.32, 0.2, 0.03]": "beta = 0.03"}, 16, 8000)
    assert result.replicas["event"].sum() == 0
    assert row["verdict"] == ABSORBING, row["verdict_reason"]
    assert "the order parameter went" in row["verdict_reason"]
