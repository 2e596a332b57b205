"""The [search] table: paths, ranges, define-by-run shapes, baselines, and its errors."""

from __future__ import annotations

import optuna
import pytest

from escapestat.config._schedules import Constant, Cosine, Pulse
from escapestat.errors import EscapestatError
from escapestat.search._space import apply_overrides, build_study, load_search, suggest

BASE = """
name = "s"
[task]
operation = "add"
p = 23
train_fraction = 0.7
[model]
kind = "mlp"
width = 16
[dynamics]
noise = "sgd"
lr = 1e-3
weight_decay = 1.0
batch_size = 32
[run]
replicas = 4
max_steps = 400
seed = 3
"""

SEARCH = """
[search]
trials = 5
max_final_test_error = 0.1
[search.space]
"dynamics.lr" = {low = 1e-3, high = 3e-2, log = true}
"dynamics.weight_decay.shape" = {choices = ["constant", "cosine", "pulse"]}
"dynamics.weight_decay.value" = {low = 0.1, high = 5.0, log = true}
"dynamics.weight_decay.start" = {low = 0.1, high = 5.0, log = true}
"dynamics.weight_decay.end" = {low = 0.01, high = 1.0, log = true}
"dynamics.weight_decay.steps" = {low = 100, high = 400}
"dynamics.weight_decay@pulse.base" = {low = 0.1, high = 2.0}
"dynamics.weight_decay@pulse.factor" = {low = 0.5, high = 5.0}
"dynamics.weight_decay@pulse.start" = {low = 50, high = 300}
"dynamics.weight_decay@pulse.length" = {low = 50, high = 300}
[search.baselines]
default = {"dynamics.lr" = 1e-3, "dynamics.weight_decay" = 1.0}
grokfast = {"dynamics.grad_filter" = {kind = "ema", alpha = 0.98, lamb = 2.0}}
"""


def load(text: str = BASE + SEARCH):
    return load_search(text, "s.toml")


def test_a_search_table_parses_with_its_baselines():
    raw, spec = load()
    assert spec.trials == 5 and spec.sampler == "tpe" and spec.objective == "rmst"
    assert set(spec.baselines) == {"default", "grokfast"}
    assert build_study(raw, spec.baselines["grokfast"], "s").dynamics.grad_filter is not None
    assert "dynamics.weight_decay.shape" in {p.path for p in spec.space}


def test_shapes_are_sampled_define_by_run():
    raw, spec = load()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(40):
        trial = study.ask()
        over = suggest(spec, trial)
        shape = over["dynamics.weight_decay.shape"]
        keys = {k.rsplit(".", 1)[1] for k in over if k.startswith("dynamics.weight_decay.")}
        expected = {"constant": {"shape", "value"},
                    "cosine": {"shape", "start", "end", "steps"},
                    "pulse": {"shape", "base", "factor", "start", "length"}}[shape]
        assert keys == expected, (shape, keys)
        wd = build_study(raw, over, "s").dynamics.weight_decay[0]
        seen[shape] = wd
        study.tell(trial, 1.0)
    assert isinstance(seen["constant"], Constant) and isinstance(seen["cosine"], Cosine)
    pulse = seen["pulse"]
    assert isinstance(pulse, Pulse) and isinstance(pulse.start, int) and pulse.start >= 50


def test_constant_only_samples_only_the_value():
    _, spec = load()
    trial = optuna.create_study().ask()
    over = suggest(spec, trial, constant_only=True)
    assert over["dynamics.weight_decay.shape"] == "constant"
    assert set(over) == {"dynamics.lr", "dynamics.weight_decay.shape",
                         "dynamics.weight_decay.value"}


def test_overrides_turn_a_constant_into_a_schedule_with_only_its_keys():
    raw, _ = load()
    out = apply_overrides(raw, {"dynamics.weight_decay.shape": "cosine",
                                "dynamics.weight_decay.start": 2.0,
                                "dynamics.weight_decay.end": 0.1,
                                "dynamics.weight_decay.steps": 100})
    assert out["dynamics"]["weight_decay"] == {"shape": "cosine", "start": 2.0, "end": 0.1,
                                               "steps": 100}
    assert "search" not in out and raw["dynamics"]["weight_decay"] == 1.0  # not mutated


@pytest.mark.parametrize("edit, message", [
    ('"dynamics.lrr" = {low = 1e-3, high = 1e-2}', "lrr"),
    ('"run.max_steps" = {low = 100, high = 200}', "'run.max_steps'"),
    ('"dynamics.lr" = {low = 1e-2, high = 1e-3}', "low (0.01) must be < high"),
    ('"dynamics.lr" = {low = 0.0, high = 1e-3, log = true}', "log range needs low > 0"),
    ('"dynamics.lr" = {low = 1e-3, hihg = 1e-2}', "did you mean 'high'"),
    ('"dynamics.lr" = {choices = []}', "non-empty list"),
    ('"dynamics.weight_decay.shape" = {choices = ["cosine", "cosin"]}', "cosin"),
    ('"dynamics.weight_decay@pulse.start" = {low = 1, high = 9}', "needs a known shape"),
    ('"dynamics.lr" = {low = 1e-3, high = 1e-2, step = 0.5}', "step (0.5) must be > 0 and at"),
    ('"dynamics.batch_size" = {low = 16, high = 64, step = 64}', "at most the range"),
    ('"dynamics.batch_size" = {low = 16.0, high = 256.0}', "'dynamics.batch_size' is a float"),
    ('"dynamics.batch_size" = {low = 16, high = 256, step = 0.5}', "takes whole numbers"),
    ('"dynamics.weight_decay.shape" = {choices = ["cosine"]}\n'
     '"dynamics.weight_decay.start" = {low = 1.0, high = 2.0}\n'
     '"dynamics.weight_decay.end" = {low = 0.1, high = 0.5}\n'
     '"dynamics.weight_decay.steps" = {low = 100.0, high = 900.0}',
     "'dynamics.weight_decay.steps' is a float range, but the key takes whole numbers"),
    ('"dynamics.batch_size" = {low = 64.0, high = 256.0}', "takes whole numbers"),
    ('"dynamics.batch_size" = {low = 64, high = 256, step = 0.5}',
     "'dynamics.batch_size' is a float range"),
    ('"model.width" = {low = 8.0, high = 32.0, log = true}', "'model.width' is a float range"),
    # Fractional ends are named as the range, not as the study key they would set.
    ('"dynamics.batch_size" = {low = 16.5, high = 16.9}', "'dynamics.batch_size' is a float"),
    # Two ranges: each is blamed for its own fractions only.
    ('"dynamics.batch_size" = {low = 16.0, high = 64.0}\n"model.width" = {low = 8.5, high = 16.0}',
     "'model.width' is a float range"),
    ('"dynamics.weight_decay.shape" = {choices = ["constant", "pulse"]}\n'
     '"dynamics.weight_decay.value" = {low = 0.5, high = 2.0}\n'
     '"dynamics.weight_decay@pulse.base" = {low = 0.1, high = 2.0}\n'
     '"dynamics.weight_decay@pulse.factor" = {low = 0.5, high = 5.0}\n'
     '"dynamics.weight_decay@pulse.start" = {low = 50.0, high = 300.0}\n'
     '"dynamics.weight_decay@pulse.length" = {low = 50, high = 300}',
     "'dynamics.weight_decay@pulse.start' is a float range"),
    ('"dynamics.grad_filter.kind" = {choices = ["ma"]}\n'
     '"dynamics.grad_filter.lamb" = {low = 1.0, high = 2.0}\n'
     '"dynamics.grad_filter.window" = {low = 10, high = 20, step = 2.5}',
     "'dynamics.grad_filter.window' is a float range"),
    ('"dynamics.weight_decay.shape" = {choices = ["cosine"]}\n'
     '"dynamics.weight_decay.start" = {low = 1.0, high = 2.0}\n'
     '"dynamics.weight_decay.end" = {low = 0.1, high = 0.5}\n'
     '"dynamics.weight_decay.steps" = {low = 100, high = 200, step = 101}',
     "'dynamics.weight_decay.steps': step (101) must be > 0 and at most the range high − low"),
])
def test_bad_space_entries_name_the_path(edit, message):
    text = BASE + "[search]\n[search.space]\n" + edit + "\n"
    with pytest.raises(EscapestatError) as err:
        load(text)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("line, message", [
    ('sampler = "tpee"', "did you mean 'tpe'"),
    ('triasl = 4', "did you mean 'trials'"),
    ('trials = 0', "trials must be a whole number ≥ 1"),
    ('compare_seed = 3', "compare_seed 3 is the search's run.seed"),
    ('max_final_test_error = 1.5', "max_final_test_error must be in (0, 1]"),
])
def test_bad_search_keys_are_one_line(line, message):
    space = '"dynamics.lr" = {low = 1e-3, high = 1e-2}'
    text = BASE + f"[search]\n{line}\n[search.space]\n{space}\n"
    with pytest.raises(EscapestatError) as err:
        load(text)
    assert message in str(err.value)


def test_a_ladder_or_a_bad_baseline_is_refused():
    ladder = BASE.replace("batch_size = 32", "batch_size = [16, 32]")
    with pytest.raises(EscapestatError, match="one condition"):
        load(ladder + SEARCH)
    bad = SEARCH.replace('"dynamics.weight_decay" = 1.0', '"dynamics.weight_decy" = 1.0')
    with pytest.raises(EscapestatError, match="baselines.default.*weight_decy"):
        load(BASE + bad)
    with pytest.raises(EscapestatError, match=r"no \[search\] table"):
        load(BASE)


def test_cli_optimize_bad_study_is_one_line(cli, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BASE + SEARCH.replace("dynamics.lr", "dynamics.lrr", 1), encoding="utf-8")
    code, out, err = cli("optimize", path, "--out", tmp_path / "o")
    assert code == 1 and out == ""
    assert err.strip().startswith("error:") and "lrr" in err and len(err.strip().splitlines()) == 1


def test_whole_number_ranges_and_float_ranges_still_load():
    space = ('"dynamics.batch_size" = {low = 16, high = 256, step = 16}\n'
             '"dynamics.lr" = {low = 1e-3, high = 1e-2, step = 1e-3}\n'
             '"dynamics.weight_decay" = {low = 0.5, high = 2.0}\n')
    _, spec = load(BASE + "[search]\n[search.space]\n" + space)
    assert [p.path for p in spec.space] == ["dynamics.batch_size", "dynamics.lr",
                                            "dynamics.weight_decay"]
    # A float range whose grid holds only whole numbers samples nothing fractional.
    _, spec = load(BASE + "[search]\n[search.space]\n"
                   '"dynamics.batch_size" = {low = 16.0, high = 64.0, step = 16.0}\n')
    assert spec.space[0].step == 16.0


def test_ranges_sample_the_type_their_key_takes():
    space = ('"dynamics.batch_size" = {low = 16, high = 64, step = 16}\n'
             '"model.width" = {low = 8, high = 64, log = true}\n'
             '"dynamics.lr" = {low = 1e-3, high = 1e-2, log = true}\n'
             '"dynamics.weight_decay" = {low = 0.5, high = 2.0}\n')
    raw, spec = load(BASE + "[search]\n[search.space]\n" + space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        over = suggest(spec, study.ask())
        assert type(over["dynamics.batch_size"]) is int and over["dynamics.batch_size"] % 16 == 0
        assert type(over["model.width"]) is int and 8 <= over["model.width"] <= 64
        assert type(over["dynamics.lr"]) is float and type(over["dynamics.weight_decay"]) is float
        assert build_study(raw, over, "s").model.width == over["model.width"]


def test_a_long_whole_grid_is_not_walked():
    # A float step over whole numbers samples only whole numbers; deciding that looks at
    # low and low + step only, never at each of a grid's 10⁸ points (0.6's first check did).
    from escapestat.search import _space as search_space

    seen = []
    real = search_space.Param

    class Counting(real):
        def __getattribute__(self, name):
            if name == "step":
                seen.append(1)
                assert len(seen) < 10, "the check walks the grid"
            return real.__getattribute__(self, name)

    grid = Counting("model.width", 1, 100000000, False, 1.0)
    assert search_space._fractional(grid) is None
    _, spec = load(BASE + "[search]\n[search.space]\n"
                   '"model.width" = {low = 1, high = 100000000, step = 1.0}\n')
    assert spec.space[0].step == 1.0
