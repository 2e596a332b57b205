"""`escapestat fit` and `escapestat arrhenius` end to end, including every bad input."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from escapestat.stats._synthetic import arrhenius_table

FIT_KEYS = {"group", "n", "events", "censored", "rate", "rate_ci", "tau", "tau_ci", "median",
            "median_ci", "median_reached", "rmst", "weibull_shape", "weibull_shape_ci",
            "poisson_pvalue"}
ARR_KEYS = {"barrier", "barrier_ci", "log_prefactor", "log_prefactor_ci", "dispersion", "method",
            "temperatures", "rates", "events", "exposure"}


def test_fit_json_contract(cli, ladder_csv):
    code, out, err = cli("fit", ladder_csv, "--group-col", "temperature", "--json",
                         "--bootstrap", "99")
    assert code == 0, err
    payload = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert len(payload["groups"]) == 3
    for group in payload["groups"]:
        assert FIT_KEYS <= set(group)
        lo, hi = group["rate_ci"]
        assert lo <= group["rate"] <= hi


def test_fit_without_group_is_all(cli, ladder_csv):
    code, out, err = cli("fit", ladder_csv, "--json", "--bootstrap", "99")
    assert code == 1 and out == "" and "within the table: temperature (3 values" in err
    assert "--by temperature" in err and "--pool" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("fit", ladder_csv, "--json", "--bootstrap", "99", "--pool")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["groups"][0]["group"] == "all" and payload["pooled"] == ["temperature"]
    assert "pooled knowingly" in err


def test_fit_prints_the_rmst_horizon_as_a_step_count(cli, tmp_path):
    """The horizon (and the bound of a not-estimable RMST) reads 1000, not 1e+03."""
    path = tmp_path / "t.csv"
    pd.DataFrame({"duration": [120.0, 400.0, 650.0, 1000.0],
                  "event": [1, 1, 1, 0]}).to_csv(path, index=False)
    code, out, err = cli("fit", path, "--bootstrap", "99")
    assert code == 0, err
    assert re.search(r"horizon\s*│\s*1000\s*│", out) and "e+03" not in out, out
    pd.DataFrame({"duration": [1000.0], "event": [1]}).to_csv(path, index=False)
    code, out, err = cli("fit", path, "--bootstrap", "99")
    assert code == 0, err
    assert "not estimable (≤ 1000)" in " ".join(out.split()), out


def test_fit_table_and_plot(cli, ladder_csv, tmp_path):
    png = tmp_path / "km.png"
    code, out, err = cli("fit", ladder_csv, "--group-col", "temperature", "--plot", png,
                         "--bootstrap", "99")
    assert code == 0, err
    assert "Weibull shape" in out and png.stat().st_size > 10_000


def test_arrhenius_json_contract_and_plot(cli, ladder_csv, tmp_path):
    png = tmp_path / "arr.png"
    code, out, err = cli("arrhenius", ladder_csv, "--json", "--plot", png,
                         "--theory-barrier", "0.03")
    assert code == 0, err
    payload = json.loads(out)
    assert ARR_KEYS <= set(payload)
    lo, hi = payload["barrier_ci"]
    assert lo < 0.03 < hi and payload["barrier_ratio"] == pytest.approx(1, abs=0.1)
    assert payload["barrier_ratio_ci"] == pytest.approx([lo / 0.03, hi / 0.03])
    assert payload["method"] == "quasi-poisson" and math.isfinite(payload["scale"])
    assert png.stat().st_size > 10_000


def test_arrhenius_from_lr_and_batch(cli, tmp_path, ladder_csv):
    df = pd.read_csv(ladder_csv)
    df["lr"] = df.pop("temperature") * 64
    df["batch_size"] = 64
    df.to_csv(tmp_path / "sgd.csv", index=False)
    code, out, err = cli("arrhenius", tmp_path / "sgd.csv", "--json")
    assert code == 0, err
    assert "T = lr / batch_size" in err
    assert json.loads(out)["barrier"] == pytest.approx(0.03, rel=0.1)


def _write(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_TABLES = {
    "missing column": ("duration,status\n1,1\n", "missing event column 'event'"),
    "non-numeric": ("duration,event\n1,1\nx,0\n", "not numeric"),
    "nan": ("duration,event\n1,1\n,0\n", "NaN"),
    "negative": ("duration,event\n1,1\n-2,0\n", "must be > 0"),
    "zero": ("duration,event\n0,1\n", "must be > 0"),
    "event not 0/1": ("duration,event\n1,3\n", "0 (censored) or 1 (escaped)"),
    "empty": ("", "empty"),
    "header only": ("duration,event\n", "no rows"),
    "duplicate column": ("duration,duration,event\n1,2,1\n", "duplicate column name 'duration'"),
    "exposure overflows": ("duration,event\n1e300,1\n2,1\n", "overflows"),
    "subnormal duration": ("duration,event\n1e-320,1\n2,1\n", "too small for a finite rate"),
}


def _with_temperature(text: str) -> str:
    """The same table with a temperature column, so arrhenius reaches the same check."""
    lines = text.splitlines(keepends=True)
    return "".join(line.rstrip("\n") + (",temperature" if i == 0 else ",0.1") + "\n"
                   for i, line in enumerate(lines))


@pytest.mark.parametrize("command", ["fit", "arrhenius"])
@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_one_line_exit_1(cli, tmp_path, command, case):
    text, message = BAD_TABLES[case]
    body = _with_temperature(text) if command == "arrhenius" else text
    code, out, err = cli(command, _write(tmp_path, body))
    assert code == 1
    assert out == ""
    assert message in err and err.startswith("error: ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_file_and_unknown_option(cli, tmp_path):
    code, _, err = cli("fit", tmp_path / "nope.csv")
    assert code == 1 and "no such file" in err
    code, _, err = cli("fit", tmp_path / "nope.csv", "--no-such-option")
    assert code == 2 and "No such option" in err


USAGE_ERRORS = {
    "unknown option": (["fit", "t.csv", "--no-such-option"], "No such option: --no-such-option"),
    "missing argument": (["arrhenius"], "Missing argument"),
    "bad value": (["fit", "t.csv", "--bootstrap", "ten"], "Invalid value for '--bootstrap'"),
    "out of range": (["fit", "t.csv", "--bootstrap", "3"], "Invalid value for '--bootstrap'"),
    "missing option value": (["fit", "t.csv", "--group-col"], "requires an argument"),
    "unknown command": (["fitt"], "No such command 'fitt'"),
    "group option": (["--bogus"], "No such option: --bogus"),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_one_line_exit_2(cli, case):
    args, message = USAGE_ERRORS[case]
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "╭" not in err and "--help" in err


def test_usage_error_one_line_from_the_console_script(tmp_path):
    """The installed `escapestat` script (here: its entry point) behaves like CliRunner."""
    env = {**os.environ, "COLUMNS": "60", "TERM": "xterm-256color"}
    cmd = [sys.executable, "-c", "from escapestat_cli.app import main; main()"]
    done = subprocess.run([*cmd, "fit", "t.csv", "--nope"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: No such option: --nope")
    assert len(done.stderr.strip().splitlines()) == 1


def test_help_unchanged(cli):
    code, out, _ = cli("fit", "--help")
    assert code == 0 and "Usage" in out and "--group-col" in out and "--by" in out
    code, out, _ = cli("--help")
    assert code == 0 and "arrhenius" in out


@pytest.mark.parametrize("value", ["0", "-0.03", "nan", "inf"])
def test_bad_theory_barrier_one_line_before_fitting(cli, tmp_path, value):
    one = _write(tmp_path, "duration,event,temperature\n5,1,0.1\n", "one.csv")  # unfittable
    code, out, err = cli("arrhenius", one, "--theory-barrier", value)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "Invalid value for '--theory-barrier': must be a finite number > 0" in err


@pytest.mark.parametrize("args", [["fit", "--grid", "-10"], ["arrhenius", "--grid", "0"],
                                  ["report", "--theory-barrier", "-1"]])
def test_bad_option_values_are_usage_errors(cli, ladder_csv, args):
    code, out, err = cli(args[0], ladder_csv, *args[1:])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: Invalid value for '{args[1]}': must be a finite number > 0")


@pytest.mark.parametrize("command", ["fit", "arrhenius"])
def test_bad_plot_path_refused_before_fitting(cli, tmp_path, command):
    one = _write(tmp_path, "duration,event,temperature\n5,1,0.1\n", "one.csv")  # unfittable
    code, out, err = cli(command, one, "--plot", tmp_path / "x.xyz")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "cannot write a figure as .xyz" in err and ".png" in err
    (tmp_path / "file").write_text("x")
    code, _, err = cli(command, one, "--plot", tmp_path / "file" / "x.png")
    assert code == 1 and "is not a directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(command, one, "--plot", tmp_path)
    assert code == 1 and "is a directory" in err


def test_unwritable_plot_directory_refused(cli, tmp_path, monkeypatch):
    """A directory we may not write in (simulated: tests may run as root, who may)."""
    import escapestat.report._figures as report

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report.tempfile, "TemporaryFile", denied)
    code, out, err = cli("arrhenius", tmp_path / "t.csv", "--plot", tmp_path / "a.png")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "cannot write the figure in" in err and "Permission denied" in err


def test_arrhenius_groups_lr_over_batch_after_rounding(cli, tmp_path):
    """0.3/48 and 0.1/16 are one temperature: 2 temperatures (no residual df), not 3."""
    rng = np.random.default_rng(0)
    lr = np.repeat([0.3, 0.1, 0.4], 40)
    batch = np.repeat([48, 16, 16], 40)
    rate = np.exp(-0.01 / (lr / batch))
    pd.DataFrame({"duration": rng.exponential(1 / rate), "event": 1, "lr": lr,
                  "batch_size": batch}).to_csv(tmp_path / "sgd.csv", index=False)
    code, out, err = cli("arrhenius", tmp_path / "sgd.csv", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["temperatures"] == [0.00625, 0.025] and payload["n"] == [80, 40]
    assert payload["dispersion"] is None and payload["method"] == "poisson"


def _two_beta_table(path, extra=None):
    frames = []
    for beta, barrier in ((0.3, 0.02), (0.4, 0.03)):
        df = arrhenius_table(barrier, -np.log(100), [0.006, 0.0068, 0.0075, 0.01], 64, 4e4,
                             seed=int(beta * 10))
        frames.append(df.assign(weight_decay=beta, barrier_theory=barrier, noise="langevin"))
    df = pd.concat(frames, ignore_index=True)
    if extra:
        df = df.assign(**extra)
    df.to_csv(path, index=False)
    return path


def test_arrhenius_refuses_pooling_two_betas(cli, tmp_path):
    path = _two_beta_table(tmp_path / "two.csv")
    code, out, err = cli("arrhenius", path, "--json")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "weight_decay (2 values: 0.3, 0.4)" in err and "--by weight_decay" in err


def test_arrhenius_by_one_fit_per_stratum(cli, tmp_path):
    path = _two_beta_table(tmp_path / "two.csv")
    png = tmp_path / "arr.png"
    code, out, err = cli("arrhenius", path, "--json", "--by", "weight_decay", "--plot", png,
                         "--theory-barrier", "0.025")
    assert code == 0, err
    strata = json.loads(out)["strata"]
    assert [s["stratum"] for s in strata] == [{"weight_decay": 0.3}, {"weight_decay": 0.4}]
    for s, truth in zip(strata, (0.02, 0.03), strict=True):
        assert ARR_KEYS <= set(s) and s["barrier_ci"][0] < truth < s["barrier_ci"][1]
        assert s["barrier_ratio"] == pytest.approx(s["barrier"] / 0.025)
    assert (tmp_path / "arr-weight_decay=0.3.png").stat().st_size > 10_000
    assert (tmp_path / "arr-weight_decay=0.4.png").exists()
    code, out, err = cli("arrhenius", path, "--by", "weight_decay")
    assert code == 0, err
    assert out.count("escape rate per temperature") == 2 and out.count("barrier ΔE") == 2
    assert "weight_decay=0.3" in out and "weight_decay=0.4" in out


def test_arrhenius_pool_knowingly(cli, tmp_path):
    path = _two_beta_table(tmp_path / "two.csv")
    code, out, err = cli("arrhenius", path, "--json", "--pool")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["pooled"] == ["weight_decay", "barrier_theory"] and "pooled knowingly" in err


def test_arrhenius_refuses_scheduled_temperature(cli, tmp_path):
    sched = json.dumps({"kind": "linear", "start": 0.01, "end": 0.001}, sort_keys=True)
    path = _two_beta_table(tmp_path / "two.csv", {"temperature_schedule": sched})
    code, out, err = cli("arrhenius", path, "--by", "weight_decay")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "'temperature_schedule' is not 'constant'" in err


def test_fit_by_strata_json(cli, tmp_path):
    path = _two_beta_table(tmp_path / "two.csv")
    code, out, err = cli("fit", path, "--group-col", "temperature", "--bootstrap", "49", "--json")
    assert code == 1 and "within temperature=" in err and "--by weight_decay" in err
    code, out, err = cli("fit", path, "--group-col", "temperature", "--by", "weight_decay",
                         "--bootstrap", "49", "--json")
    assert code == 0, err
    strata = json.loads(out)["strata"]
    assert [s["stratum"] for s in strata] == [{"weight_decay": 0.3}, {"weight_decay": 0.4}]
    assert all(len(s["groups"]) == 4 and FIT_KEYS <= set(s["groups"][0]) for s in strata)
    code, out, err = cli("fit", path, "--group-col", "temperature", "--by", "weight_decay",
                         "--bootstrap", "49")
    assert code == 0 and out.count("Escape statistics") == 2


def _grid_table(tmp_path, step=10):
    rng = np.random.default_rng(1)
    t = np.ceil(rng.exponential(300, 80) / step) * step
    pd.DataFrame({"duration": t, "event": 1}).to_csv(tmp_path / "escapes.csv", index=False)
    return tmp_path / "escapes.csv"


def test_fit_grid_option_and_run_json(cli, tmp_path):
    path = _grid_table(tmp_path)
    code, out, err = cli("fit", path, "--json", "--bootstrap", "49")
    assert code == 0, err
    assert json.loads(out)["groups"][0]["ks_grid"] is None  # no run.json, no --grid
    code, out, err = cli("fit", path, "--json", "--bootstrap", "49", "--grid", "10")
    assert json.loads(out)["groups"][0]["ks_grid"] == 10
    (tmp_path / "run.json").write_text(json.dumps({"study": "s", "check_every": 10}))
    code, out, err = cli("fit", path, "--json", "--bootstrap", "49")
    assert code == 0, err
    assert json.loads(out)["groups"][0]["ks_grid"] == 10
    code, out, err = cli("fit", path, "--json", "--bootstrap", "49", "--grid", "5")
    assert json.loads(out)["groups"][0]["ks_grid"] == 5  # --grid wins over run.json


@pytest.mark.parametrize("value", ["0", "-10", "nan"])
def test_fit_bad_grid(cli, tmp_path, value):
    code, out, err = cli("fit", _grid_table(tmp_path), "--grid", value)
    assert code == 2 and out == "" and "'--grid': must be a finite number > 0" in err
    assert len(err.strip().splitlines()) == 1


def test_fit_bad_run_json(cli, tmp_path):
    path = _grid_table(tmp_path)
    (tmp_path / "run.json").write_text("{truncated")
    code, out, err = cli("fit", path)
    assert code == 1 and "run.json" in err and "--grid" in err


def test_arrhenius_single_temperature_and_all_censored(cli, tmp_path):
    one = _write(tmp_path, "duration,event,temperature\n5,1,0.1\n7,0,0.1\n", "one.csv")
    code, _, err = cli("arrhenius", one)
    assert code == 1 and "at least two temperatures" in err
    none = _write(tmp_path, "duration,event,temperature\n9,0,0.1\n9,0,0.2\n", "none.csv")
    code, _, err = cli("arrhenius", none)
    assert code == 1 and "no escapes at any temperature" in err and "k<" in err


def test_fit_all_censored_reports_upper_bound(cli, tmp_path):
    path = _write(tmp_path, "duration,event\n100,0\n100,0\n100,0\n")
    code, out, err = cli("fit", path, "--json", "--bootstrap", "49")
    assert code == 0, err
    group = json.loads(out)["groups"][0]
    assert group["rate"] == 0 and group["rate_ci"][0] == 0 and group["rate_ci"][1] > 0
    assert group["median"] is None and group["median_reached"] is False


@pytest.mark.parametrize("columns", [80, 200])
def test_fit_table_never_splits_a_number(tmp_path, columns):
    """Five conditions with rates near 1e-6 in an 80-column terminal: each CI is "lo–" over
    "hi" (rich used to fold "2.44e-06–4.41e-06" inside a number); at 200 columns one line."""
    rng = np.random.default_rng(0)
    rows = ["duration,event,temperature"]
    for temp in (0.01, 0.015, 0.02, 0.025, 0.03):
        t = np.ceil(rng.exponential(3e3 / temp, 64))
        rows += [f"{min(x, 4e5):.0f},{int(x < 4e5)},{temp}" for x in t]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    cmd = [sys.executable, "-c", "from escapestat_cli.app import main; main()"]
    done = subprocess.run([*cmd, "fit", "t.csv", "--group-col", "temperature"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    body = [line.split("│")[2:-1] for line in done.stdout.splitlines() if line.startswith("│")]
    cells = [c.strip() for row in body for c in row]
    number = r"(\d+(\.\d+)?(e[-+]\d\d)?|∞|—)"
    ok = rf"{number}?|{number}–({number})?|[a-z ]+"
    assert all(re.fullmatch(ok, c) for c in cells), [c for c in cells if not re.fullmatch(ok, c)]
    cis = [c for c in cells if "–" in c]
    one_line = [c for c in cis if re.fullmatch(rf"{number}–{number}", c)]
    assert (len(one_line) == len(cis)) == (columns == 200)
    assert all(len(line) <= columns for line in done.stdout.splitlines())


BAD_TEMPERATURES = {
    "string": ("T0.01", "T0.02", "is not numeric at rows"),
    "NaN": ("", "0.02", "has missing/NaN values at rows 1, 2"),
    "negative": ("-0.01", "-0.02", "must be > 0 at rows"),
}


@pytest.mark.parametrize("command", ["arrhenius", "report", "regress"])
@pytest.mark.parametrize("case", sorted(BAD_TEMPERATURES))
def test_every_command_refuses_bad_temperatures_alike(cli, tmp_path, command, case):
    """Two temperatures, one of them bad: arrhenius, report and regress (when its formula
    uses temperature) print the same one line and exit 1."""
    first, second, message = BAD_TEMPERATURES[case]
    rows = [f"{1 + i % 7},1,{first if i < 20 else second}" for i in range(40)]
    table = _write(tmp_path, "duration,event,temperature\n" + "\n".join(rows) + "\n")
    extra = {"report": ["--out", tmp_path / "r.html"], "regress": ["I(-1/temperature)"],
             "arrhenius": []}[command]
    code, out, err = cli(command, table, *extra)
    assert code == 1, out + err
    assert err.startswith("error: column 'temperature' ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_a_one_valued_temperature_is_a_label_for_report(cli, tmp_path):
    """A grokking run whose lr warms up from 0 labels its rows T = 0: report reads the table
    (one temperature: no Arrhenius plot to make)."""
    rows = [f"{10 + i},{i % 2},0" for i in range(20)]
    table = _write(tmp_path, "duration,event,temperature\n" + "\n".join(rows) + "\n")
    code, _, err = cli("report", table, "--out", tmp_path / "r.html")
    assert code == 0, err
    assert (tmp_path / "r.html").exists()


def test_an_almost_one_event_is_shown_with_its_digits(cli, tmp_path):
    code, _, err = cli("fit", _write(tmp_path, "duration,event\n1,1.0000001\n2,0\n"))
    assert code == 1 and "got 1.0000001 at row 1" in err


def test_shell_completion_completes_commands_and_options(tmp_path):
    """``--install-completion`` writes the shell's script; the script asks the program
    itself, as here, for the words that complete the line."""
    cmd = [sys.executable, "-c", "from escapestat_cli.app import main; main()"]

    def complete(words: str, cword: int) -> list[str]:
        env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": str(cword),
               "_ESCAPESTAT_COMPLETE": "complete_bash"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                              cwd=tmp_path)
        return done.stdout.split()

    assert complete("escapestat arr", 1) == ["arrhenius"]
    assert complete("escapestat fit --ci", 2) == ["--ci-transform"]


def test_no_aft_barrier_beside_a_rate_that_does_not_rise(cli, tmp_path):
    """A ladder whose rate falls with T has no barrier: the AFT cross-check is shown as a
    slope, never as "Weibull AFT = …" beside "no barrier"."""
    df = arrhenius_table(-0.03, -np.log(120), [0.01, 0.0075, 0.005], 96, 4e4, seed=3)
    path = tmp_path / "falling.csv"
    df.to_csv(path, index=False)
    code, out, err = cli("arrhenius", path)
    assert code == 0, err
    assert "no barrier" in out and "Weibull AFT     : slope" in out
    assert "Weibull AFT     =" not in out
