"""The model registry: one line per kind, and every spec class knows its kind from it —
also in a process that only unpickles a study (a Dask worker), where no one asked the
registry first."""

from __future__ import annotations

import pickle
import subprocess
import sys

from escapestat.config import kinds, spec_class
from escapestat.config._registry import kind_of
from escapestat.models.grokking.spec import GrokkingSpec


def test_every_spec_class_knows_its_kind():
    for kind in kinds():
        assert spec_class(kind).kind == kind == kind_of(spec_class(kind))
    assert GrokkingSpec.kind == ""  # a shared base, not a kind


def test_an_unpickled_study_knows_its_kind_in_a_fresh_process():
    from escapestat.config import study_from_dict

    study = study_from_dict({"name": "t", "model": {"kind": "mlp", "width": 16},
                             "task": {"p": 7}, "dynamics": {"noise": "sgd", "lr": 0.01,
                                                            "weight_decay": 1.0,
                                                            "batch_size": 8}}, "t.toml")
    code = ("import pickle, sys; s = pickle.loads(sys.stdin.buffer.read()); "
            "print(type(s.model).kind, s.model.kind)")
    done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(study),
                          capture_output=True, check=True)
    assert done.stdout.decode().split() == ["mlp", "mlp"]
