import pytest
import torch

from escapestat.errors import EscapestatError
from escapestat.models._grad_filter import EmaFilter, MovingAverageFilter, parse_grad_filter

SHAPES = [(3, 2), ()]  # per-replica parameter shapes: a matrix and a scalar


def _script(steps, replicas, seed=0, dtype=torch.float64):
    """A scripted gradient sequence: per step, one [R, ...] tensor per parameter."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(replicas, *s, generator=gen, dtype=dtype) for s in SHAPES]
            for _ in range(steps)]


class _RefEma:
    """Per-replica, per-parameter loop, written from the Grokfast-EMA definition."""

    def __init__(self, alpha, lamb):
        self.alpha, self.lamb, self.h = alpha, lamb, {}

    def __call__(self, key, g):
        h = self.h.get(key)
        h = g.clone() if h is None else self.alpha * h + (1 - self.alpha) * g
        self.h[key] = h
        return g + self.lamb * h


class _RefMa:
    """Per-replica window as a Python list: g + λ·mean(window) once it is full."""

    def __init__(self, window, lamb):
        self.window, self.lamb, self.seen = window, lamb, {}

    def __call__(self, key, g):
        past = self.seen.setdefault(key, [])
        past.append(g.clone())
        del past[:-self.window]
        if len(past) < self.window:
            return g
        return g + self.lamb * sum(past) / self.window


def _reference(ref, script, replica_ids):
    """Run the reference replica by replica; replica_ids[r] names row r's state."""
    out = []
    for grads in script:
        out.append([torch.stack([ref((rid, p), g[r]) for r, rid in enumerate(replica_ids)])
                    for p, g in enumerate(grads)])
    return out


def _check(filt, ref, script, replica_ids=None):
    replica_ids = replica_ids or list(range(script[0][0].shape[0]))
    expected = _reference(ref, script, replica_ids)
    for t, (grads, want) in enumerate(zip(script, expected, strict=True)):
        got = filt(grads)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, msg=f"step {t}")


def test_ema_matches_a_per_replica_loop():
    script = _script(30, 3)
    _check(EmaFilter(0.9, 2.0), _RefEma(0.9, 2.0), script)


def test_ema_first_output_is_one_plus_lambda_times_g():
    g = torch.randn(4, 3, dtype=torch.float64)
    out = EmaFilter(0.98, 2.0)([g])[0]
    torch.testing.assert_close(out, 3.0 * g)


@pytest.mark.parametrize("window", [1, 4, 7])
def test_ma_matches_a_per_replica_loop(window):
    script = _script(31, 3, seed=window)
    _check(MovingAverageFilter(window, 5.0), _RefMa(window, 5.0), script)


def test_ma_passes_gradients_through_until_the_window_is_full():
    filt = MovingAverageFilter(3, 5.0)
    grads = [torch.ones(2, 4), torch.ones(2)]
    assert all(a is b for a, b in zip(filt(grads), grads, strict=True))
    assert all(a is b for a, b in zip(filt(grads), grads, strict=True))
    torch.testing.assert_close(filt(grads)[0], torch.full((2, 4), 6.0))


def test_ma_running_sum_stays_exact_over_many_wraps():
    script = _script(600, 2, seed=3, dtype=torch.float32)
    filt, ref = MovingAverageFilter(7, 5.0), _RefMa(7, 5.0)
    for grads in script:
        got = filt(grads)
        want = [torch.stack([ref((r, p), g[r].double()) for r in range(2)])
                for p, g in enumerate(grads)]
    for g, w in zip(got, want, strict=True):  # float32 filter against a float64 loop
        torch.testing.assert_close(g.double(), w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: EmaFilter(0.8, 2.0), lambda: MovingAverageFilter(4, 3.0)],
                         ids=["ema", "ma"])
def test_replicas_are_independent(make):
    script = _script(12, 2, seed=1)
    other = [[g.clone() for g in grads] for grads in script]
    for grads in other:  # replica 1 sees completely different gradients
        for g in grads:
            g[1] = 100.0 * torch.randn_like(g[1])
    alone = make()  # replica 0 on its own
    a, b = make(), make()
    for clean, noisy in zip(script, other, strict=True):
        out_a, out_b = a(clean), b(noisy)
        out_alone = alone([g[:1] for g in clean])
        for x, y, z in zip(out_a, out_b, out_alone, strict=True):
            assert torch.equal(x[0], y[0])
            torch.testing.assert_close(x[:1], z)


@pytest.mark.parametrize(
    "make, make_ref",
    [(lambda: EmaFilter(0.7, 1.5), lambda: _RefEma(0.7, 1.5)),
     (lambda: MovingAverageFilter(3, 2.0), lambda: _RefMa(3, 2.0))],
    ids=["ema", "ma"],
)
def test_keep_keeps_the_right_replicas(make, make_ref):
    filt, ref = make(), make_ref()
    _check(filt, ref, _script(5, 4, seed=2))
    filt.keep(torch.tensor([3, 1]))
    # Continue with two replicas: rows 0 and 1 now carry replicas 3 and 1's state.
    _check(filt, ref, _script(5, 2, seed=4), replica_ids=[3, 1])
    filt.keep(torch.tensor([1]))
    _check(filt, ref, _script(3, 1, seed=5), replica_ids=[1])


def test_keep_before_the_first_call_and_reset():
    for filt in (EmaFilter(0.5, 1.0), MovingAverageFilter(2, 1.0)):
        filt.keep(torch.tensor([0]))  # no state yet: nothing to do
        g = torch.ones(3, 2)
        first = filt([g])[0].clone()
        filt([2 * g])
        filt.reset()
        torch.testing.assert_close(filt([g])[0], first)


def test_parse_grad_filter():
    assert parse_grad_filter(None, "f") is None
    ema = parse_grad_filter({"kind": "ema", "alpha": 0.98, "lamb": 2}, "f")
    assert isinstance(ema, EmaFilter) and (ema.alpha, ema.lamb) == (0.98, 2.0)
    assert ema.describe() == '{"kind":"ema","alpha":0.98,"lamb":2.0}'
    ma = parse_grad_filter({"kind": "ma", "window": 100.0, "lamb": 5.0}, "f")
    assert isinstance(ma, MovingAverageFilter) and ma.window == 100 and ma.lamb == 5.0
    assert ma.describe() == '{"kind":"ma","window":100,"lamb":5.0}'
    again = parse_grad_filter({"kind": "ma", "window": 100.0, "lamb": 5.0}, "f")
    assert again is not ma  # a fresh, stateless filter each time


W = "study.toml: [dynamics] grad_filter"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ema", f"{W} must be a table"),
        ({"alpha": 0.9, "lamb": 1}, f"{W}.kind must be 'ema' or 'ma', got None"),
        ({"kind": "emma", "alpha": 0.9, "lamb": 1}, "got 'emma' (did you mean 'ema'?)"),
        ({"kind": "ema", "alhpa": 0.9, "lamb": 1},
         f"{W}: unknown key 'alhpa' for kind 'ema' (did you mean 'alpha'?)"),
        ({"kind": "ma", "alpha": 0.9, "window": 3, "lamb": 1}, f"{W}: unknown key 'alpha' for "
         "kind 'ma'"),
        ({"kind": "ema", "alpha": 0.9}, f"{W}: kind 'ema' needs 'lamb'"),
        ({"kind": "ema", "alpha": 1.0, "lamb": 1}, f"{W}.alpha must be in [0, 1), got 1.0"),
        ({"kind": "ema", "alpha": -0.1, "lamb": 1}, f"{W}.alpha must be in [0, 1)"),
        ({"kind": "ema", "alpha": "0.9", "lamb": 1}, f"{W}.alpha must be a finite number"),
        ({"kind": "ema", "alpha": 0.9, "lamb": -1}, f"{W}.lamb must be ≥ 0, got -1.0"),
        ({"kind": "ma", "window": 0, "lamb": 1}, f"{W}.window must be ≥ 1, got 0"),
        ({"kind": "ma", "window": 2.5, "lamb": 1}, f"{W}.window must be an integer"),
        ({"kind": "ma", "window": 5, "lamb": float("inf")}, f"{W}.lamb must be a finite number"),
    ],
)
def test_parse_errors_name_the_key(spec, message):
    with pytest.raises(EscapestatError) as info:
        parse_grad_filter(spec, W)
    text = str(info.value)
    assert message in text and "\n" not in text
