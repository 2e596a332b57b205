"""Nanda et al.'s setup as options: the split size int(f·N) (``[task] train_rounding``),
the readout over p + 1 classes (``[model] readout``), LambdaLR's warm-up from lr 0; each
default unchanged, and the config hash of studies without the keys unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testdata import GROK

from escapestat.config._schedules import parse_schedule
from escapestat.config._study import parse_study
from escapestat.config._task import train_size
from escapestat.errors import EscapestatError
from escapestat.models.grokking._modular import make_task

#: p = 113 at f = 0.3, full batch: 0.3 · 12769 = 3830.7 pairs.
P113 = (GROK.replace("p = 23", "p = 113").replace("train_fraction = 0.7", "train_fraction = 0.3")
        .replace("batch_size = 64", 'batch_size = "full"'))


def _with(rounding: str | None) -> str:
    line = "" if rounding is None else f'train_rounding = "{rounding}"\n'
    return P113.replace("train_fraction = 0.3\n", f"train_fraction = 0.3\n{line}")


def test_floor_is_nandas_int():
    assert train_size(12769, 0.3) == 3831 and train_size(12769, 0.3, "floor") == 3830
    assert train_size(10, 0.01, "floor") == 1 and train_size(10, 0.999, "floor") == 9


def test_full_batch_and_splits_follow_the_rounding():
    assert parse_study(_with(None)).dynamics.batch_size[0].value(0) == 3831
    floor = parse_study(_with("floor"))
    assert floor.dynamics.batch_size[0].value(0) == 3830
    task = make_task("add", 113, 2, 0.3, generator=torch.Generator().manual_seed(0),
                     rounding=floor.task.train_rounding)
    assert task.splits.train.shape == (2, 3830) and task.splits.test.shape == (2, 12769 - 3830)


def test_hash_of_studies_without_the_key_is_unchanged():
    # Both hashes as escapestat computed them before the key existed (commit afde778).
    assert parse_study(_with(None)).config_hash() == "eeec5b0019e4f9b2"
    assert parse_study(GROK).config_hash() == "ddca8ea565a726a7"
    assert parse_study(_with("round")).config_hash() == parse_study(_with(None)).config_hash()
    assert parse_study(_with("floor")).config_hash() != parse_study(_with(None)).config_hash()


def test_unknown_rounding_is_refused():
    with pytest.raises(EscapestatError, match=r"\[task\] train_rounding must be 'round' or "
                                              r"'floor', got 'ceil'"):
        parse_study(_with("ceil"))


def test_the_engines_trial_splits_with_the_studys_rounding():
    from escapestat.config._conditions import conditions
    from escapestat.models.grokking.mlp.model import MLPTrial

    study = parse_study(_with("floor"))
    trial = MLPTrial(study, conditions(study), torch.Generator().manual_seed(0),
                      torch.device("cpu"))
    assert trial.task.splits.train.shape[1] == 3830


TRANSFORMER = Path(__file__).parents[2] / "studies" / "grok-transformer.toml"


def _readout(value: str | None) -> str:
    line = "" if value is None else f'readout = "{value}"\n'
    return TRANSFORMER.read_text().replace("d_mlp = 512\n", f"d_mlp = 512\n{line}")


def test_readout_p_plus_1_builds_nandas_unembedding_and_keeps_old_hashes():
    from escapestat.config._conditions import conditions
    from escapestat.models.grokking.transformer.model import TransformerTrial

    # As escapestat computed it before the key existed (commit 71a8079).
    assert parse_study(_readout(None)).config_hash() == "d314be1550b7b9d8"
    assert parse_study(_readout("p")).config_hash() == "d314be1550b7b9d8"
    wide = parse_study(_readout("p+1"))
    assert wide.config_hash() != "d314be1550b7b9d8"
    trial = TransformerTrial(wide, conditions(wide), torch.Generator().manual_seed(0),
                             torch.device("cpu"))
    assert trial.net.params[trial.net.param_names.index("W_U")].shape[1:] == (128, 24)
    with pytest.raises(EscapestatError, match=r"\[model\] readout must be 'p' or 'p\+1', "
                                              r"got 'p\+2'"):
        parse_study(_readout("p+2"))


def test_a_linear_warmup_from_zero_is_lambdalrs_min_t_over_10():
    """Nanda et al.'s LambdaLR(lambda step: min(step/10, 1)), stepped after each optimizer
    step: lr 0 at the first step, exactly (same float operations), then the plateau."""
    schedule = parse_schedule({"shape": "linear", "start": 0, "end": 1e-3, "steps": 10}, "lr")
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(step / 10, 1))
    theirs = []
    for _ in range(25):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        lambda_lr.step()
    assert [schedule.value(t) for t in range(25)] == theirs and theirs[0] == 0.0


def test_lr_may_start_at_zero_but_not_stay_there():
    warm = GROK.replace("lr = 2e-2", 'lr = {shape = "linear", start = 0, end = 1e-3, steps = 10}')
    assert warm != GROK
    assert parse_study(warm).dynamics.lr[0].value(0) == 0.0
    for bad in ("lr = 0", 'lr = {shape = "linear", start = -1e-3, end = 1e-3, steps = 10}'):
        with pytest.raises(EscapestatError, match=r"\[dynamics\] lr must be ≥ 0 at every step"):
            parse_study(GROK.replace("lr = 2e-2", bad))
