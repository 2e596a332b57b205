import json
import math

import pytest
import torch

from escapestat.config._schedules import (
    SHAPES,
    Constant,
    Cosine,
    Cyclic,
    Exponential,
    Linear,
    Logarithmic,
    Pulse,
    Steps,
    Warmup,
    parse_ladder,
    parse_schedule,
)
from escapestat.engine._hyper import ReplicaSchedules
from escapestat.errors import EscapestatError

HALF_ROOT2 = math.sqrt(2) / 2

# (schedule, {t: expected}) — worked out by hand, boundaries included: t = 0,
# t = steps − 1, t = steps and far beyond.
CASES = [
    (Constant(0.5), {0: 0.5, 1: 0.5, 10**9: 0.5}),
    (Steps([1.0, 0.5, 0.1], [10, 20]),
     {0: 1.0, 9: 1.0, 10: 0.5, 19: 0.5, 20: 0.1, 10**6: 0.1}),
    (Linear(1.0, 0.0, 4), {0: 1.0, 1: 0.75, 3: 0.25, 4: 0.0, 100: 0.0}),
    (Linear(0.1, 0.3, 2), {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.3}),
    (Exponential(1.0, 0.01, 4), {0: 1.0, 1: 10**-0.5, 2: 0.1, 3: 10**-1.5, 4: 0.01, 9: 0.01}),
    (Cosine(1.0, 0.0, 4),
     {0: 1.0, 1: (1 + HALF_ROOT2) / 2, 2: 0.5, 3: (1 - HALF_ROOT2) / 2, 4: 0.0, 50: 0.0}),
    (Cosine(2.0, 1.0, 4), {0: 2.0, 2: 1.5, 4: 1.0}),
    (Warmup(2.0, 4), {0: 0.5, 1: 1.0, 2: 1.5, 3: 2.0, 4: 2.0, 100: 2.0}),
    (Pulse(1.0, 3.0, 5, 2), {0: 1.0, 4: 1.0, 5: 3.0, 6: 3.0, 7: 1.0, 1000: 1.0}),
    # ln(e + 1) = 1.3132616875182228, ln(e + 10) = 2.5430404724...
    (Logarithmic(2.0, 10.0), {0: 2.0, 10: 2 / 1.3132616875182228, 100: 2 / 2.5430404724093343}),
    (Cyclic(0.0, 1.0, 4),
     {0: 1.0, 1: (1 + HALF_ROOT2) / 2, 2: 0.5, 3: (1 - HALF_ROOT2) / 2, 4: 1.0, 6: 0.5, 7:
      (1 - HALF_ROOT2) / 2}),
    (Cyclic(0.2, 0.2, 3), {0: 0.2, 2: 0.2, 3: 0.2}),
]


@pytest.mark.parametrize("schedule, expected", CASES, ids=lambda c: getattr(c, "shape", None))
def test_values_at_chosen_steps(schedule, expected):
    for t, want in expected.items():
        assert schedule.value(t) == pytest.approx(want, rel=1e-9, abs=1e-12), t


def test_every_shape_has_a_value_case():
    assert {s.shape for s, _ in CASES} == set(SHAPES)


@pytest.mark.parametrize(
    "schedule, lo, hi, positive",
    [
        (Constant(-1.0), -1.0, -1.0, False),
        (Steps([0.3, 0.1, 0.2], [5, 9]), 0.1, 0.3, True),
        (Linear(1.0, 0.0, 4), 0.0, 1.0, False),
        (Exponential(0.01, 1.0, 4), 0.01, 1.0, True),
        (Cosine(1.0, 0.1, 5000), 0.1, 1.0, True),
        (Warmup(2.0, 4), 0.5, 2.0, True),
        (Pulse(1.0, 0.0, 3, 1), 0.0, 1.0, False),
        (Logarithmic(2.0, 10.0), 0.0, 2.0, True),  # the infimum 0 is never reached
        (Logarithmic(-2.0, 10.0), -2.0, 0.0, False),
        (Cyclic(0.0, 1.0, 4), (1 - HALF_ROOT2) / 2, 1.0, True),  # low itself is not reached
    ],
    ids=lambda c: getattr(c, "shape", None),
)
def test_bounds(schedule, lo, hi, positive):
    assert schedule.min_value == pytest.approx(lo)
    assert schedule.max_value == pytest.approx(hi)
    assert schedule.positive is positive


def test_constant_detection_and_labels():
    for s in (Constant(3.0), Linear(1, 1, 5), Warmup(2.0, 1), Pulse(1, 1, 0, 9),
              Steps([2, 2], [4]), Cyclic(0, 1, 1), Logarithmic(0, 1)):
        assert s.is_constant and s.label() == "constant", s
    cosine = Cosine(1, 0.1, 5000)
    assert not cosine.is_constant
    assert cosine.describe() == '{"shape":"cosine","start":1.0,"end":0.1,"steps":5000}'
    assert cosine.label() == cosine.describe()
    assert Constant(1e-3).describe() == '{"shape":"constant","value":0.001}'
    assert Warmup(1, 10).describe() == '{"shape":"warmup","value":1.0,"steps":10}'
    assert Steps([1, 0.5], [100]).describe() == '{"shape":"steps","values":[1.0,0.5],"at":[100]}'


@pytest.mark.parametrize(
    "schedule",
    [Constant(1e-3), Steps([1.0, 0.5, 0.25], [3, 70]), Linear(0.1, 0.3, 7),
     Exponential(0.02, 0.002, 20000), Cosine(1.0, 0.1, 5000), Warmup(0.01, 100),
     Pulse(1.0, 3.0, 700, 1000), Logarithmic(0.5, 30.0), Cyclic(0.1, 2.0, 250)],
    ids=lambda s: s.shape,
)
def test_describe_round_trips(schedule):
    back = parse_schedule(json.loads(schedule.describe()), "x")
    assert back == schedule and type(back) is type(schedule)
    assert hash(back) == hash(schedule) and back.describe() == schedule.describe()


def test_parse_numbers_and_tables():
    assert parse_schedule(3, "lr") == Constant(3.0)
    assert parse_schedule({"shape": "constant", "value": 2}, "lr") == Constant(2.0)
    spec = {"shape": "pulse", "base": 1, "factor": 3.0, "start": 700.0, "length": 1000}
    pulse = parse_schedule(spec, "wd")
    assert pulse == Pulse(1.0, 3.0, 700, 1000) and isinstance(pulse.start, int)
    assert parse_schedule(pulse, "wd") is pulse


W = "study.toml: [dynamics] wd"


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"shape": "cosine", "start": 1, "end": 0.1, "stpes": 10},
         f"{W}: unknown key 'stpes' for shape 'cosine' (did you mean 'steps'?)"),
        ({"shape": "cosine", "start": 1, "end": 0.1}, f"{W}: shape 'cosine' needs 'steps'"),
        ({"shape": "cosin", "start": 1}, f"{W}.shape: unknown shape 'cosin' (did you mean "
         "'cosine'?); shapes are constant, steps, linear"),
        ({"start": 1, "end": 2}, f"{W} needs a 'shape' key (one of constant, steps"),
        ("fast", f"{W} must be a number or a table with a 'shape' key"),
        (True, f"{W} must be a number or a table"),
        (float("nan"), f"{W} must be finite"),
        ({"shape": "linear", "start": "1", "end": 0, "steps": 3}, f"{W}.start must be a number"),
        ({"shape": "linear", "start": 1, "end": 0, "steps": 0}, f"{W}.steps must be ≥ 1, got 0"),
        ({"shape": "linear", "start": 1, "end": 0, "steps": 2.5}, f"{W}.steps must be an integer"),
        ({"shape": "exponential", "start": 1, "end": 0, "steps": 9}, f"{W}.end must be > 0"),
        ({"shape": "exponential", "start": -1, "end": 1, "steps": 9}, f"{W}.start must be > 0"),
        ({"shape": "cosine", "start": 1, "end": float("inf"), "steps": 9}, f"{W}.end must be "
         "finite"),
        ({"shape": "cyclic", "low": 0, "high": 1, "period": 0}, f"{W}.period must be ≥ 1"),
        ({"shape": "cyclic", "low": 2, "high": 1, "period": 5}, f"{W}.high must be ≥ low"),
        ({"shape": "steps", "values": [1, 2], "at": [3, 4]},
         f"{W}.values must have one more entry than at (3), got 2"),
        ({"shape": "steps", "values": [1, 2, 3], "at": [4, 4]},
         f"{W}.at must be strictly increasing"),
        ({"shape": "steps", "values": [1, 2], "at": [0]}, f"{W}.at must be steps ≥ 1"),
        ({"shape": "steps", "values": [1, 2, 3], "at": [4, "x"]}, f"{W}.at[1] must be an integer"),
        ({"shape": "steps", "values": 1, "at": []}, f"{W}.values must be a list"),
        ({"shape": "pulse", "base": 1, "factor": 2, "start": 0, "length": 0},
         f"{W}.length must be ≥ 1"),
        ({"shape": "pulse", "base": 1, "factor": 2, "start": -1, "length": 3},
         f"{W}.start must be ≥ 0"),
        ({"shape": "log", "c": 1, "t0": 0}, f"{W}.t0 must be > 0"),
        ({"shape": "warmup", "value": 1, "steps": 0}, f"{W}.steps must be ≥ 1"),
        ({"shape": "warmup", "level": 1, "steps": 3}, f"{W}: unknown key 'level'"),
    ],
)
def test_parse_errors_name_the_key(spec, message):
    with pytest.raises(EscapestatError) as info:
        parse_schedule(spec, W)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_direct_construction_is_validated_too():
    with pytest.raises(EscapestatError, match="cosine schedule: steps must be ≥ 1"):
        Cosine(1.0, 0.1, 0)


def test_ladders():
    assert parse_ladder(0.1, "lr") == (Constant(0.1),)
    assert parse_ladder({"shape": "warmup", "value": 1, "steps": 10}, "lr") == (Warmup(1, 10),)
    ladder = parse_ladder([0.1, {"shape": "warmup", "value": 1, "steps": 10}, 2], "lr")
    assert ladder == (Constant(0.1), Warmup(1.0, 10), Constant(2.0))
    with pytest.raises(EscapestatError, match=r"^lr must not be an empty list$"):
        parse_ladder([], "lr")
    with pytest.raises(EscapestatError, match=r"^lr\[1\]\.shape: unknown shape 'nope'"):
        parse_ladder([0.1, {"shape": "nope"}], "lr")


def _expected(schedules, t):
    return torch.tensor([s.value(t) for s in schedules], dtype=torch.float64)


def test_replica_schedules_mixed():
    a, b = Cosine(1.0, 0.0, 10), Warmup(2.0, 5)
    schedules = [a, b, a, Constant(0.3), Constant(0.3), Cosine(1.0, 0.0, 10)]
    rs = ReplicaSchedules(schedules, dtype=torch.float64)
    assert len(rs) == 6 and not rs.is_constant
    assert len(rs._distinct) == 3  # equal schedules are evaluated once
    for t in (0, 1, 4, 5, 9, 10, 50):
        assert torch.equal(rs.at(t), _expected(schedules, t)), t
    assert rs.at(0).dtype == torch.float64 and rs.at(0).shape == (6,)
    assert rs.labels() == [a.describe(), b.describe(), a.describe(), "constant", "constant",
                           a.describe()]
    assert ReplicaSchedules([a]).at(3).dtype == torch.float32


def test_replica_schedules_keep():
    a, b, c = Cosine(1.0, 0.0, 10), Warmup(2.0, 5), Constant(0.3)
    rs = ReplicaSchedules([a, b, a, c, b, Pulse(1.0, 2.0, 3, 4)], dtype=torch.float64)
    rs.keep(torch.tensor([5, 0, 3]))
    kept = [Pulse(1.0, 2.0, 3, 4), a, c]
    assert rs.schedules == tuple(kept)
    for t in (0, 3, 7, 12):
        assert torch.equal(rs.at(t), _expected(kept, t))
    rs.keep(torch.tensor([2]))
    assert rs.is_constant and rs.labels() == ["constant"]
    assert torch.equal(rs.at(0), torch.tensor([0.3], dtype=torch.float64))
    rs.keep(torch.tensor([], dtype=torch.long))
    assert len(rs) == 0 and rs.at(5).shape == (0,)


def test_all_constant_returns_a_cached_tensor():
    rs = ReplicaSchedules([Constant(0.1), Constant(0.2), Constant(0.1), Linear(3, 3, 9)])
    first = rs.at(0)
    assert rs.is_constant and rs.at(10**6) is first
    assert torch.allclose(first, torch.tensor([0.1, 0.2, 0.1, 3.0]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replica_schedules_on_cuda():
    schedules = [Cosine(1.0, 0.0, 10), Constant(0.5), Warmup(2.0, 5)]
    rs = ReplicaSchedules(schedules, dtype=torch.float64, device="cuda")
    assert rs.at(3).device.type == "cuda"
    assert torch.equal(rs.at(3).cpu(), _expected(schedules, 3))
    rs.keep(torch.tensor([2, 0], device="cuda"))
    assert torch.equal(rs.at(3).cpu(), _expected([schedules[2], schedules[0]], 3))
