"""``[task] train_rounding``: Nanda et al.'s split size int(f·N) as an option, the default
(round) unchanged, and the config hash of studies without the key unchanged."""

from __future__ import annotations

import pytest
import torch
from testdata import GROK

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
