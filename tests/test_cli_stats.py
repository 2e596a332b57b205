"""`escapestat fit` and `escapestat arrhenius` end to end, including every bad input."""

import json

import pandas as pd
import pytest

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
    code, out, _ = cli("fit", ladder_csv, "--json", "--bootstrap", "99")
    assert code == 0 and json.loads(out)["groups"][0]["group"] == "all"


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
}


@pytest.mark.parametrize("command", ["fit", "arrhenius"])
@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_one_line_exit_1(cli, tmp_path, command, case):
    text, message = BAD_TABLES[case]
    body = text if command == "fit" or not text.startswith("duration,event\n1") else text
    code, out, err = cli(command, _write(tmp_path, body))
    assert code == 1
    assert out == ""
    assert message in err or (command == "arrhenius" and "temperature" in err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_file_and_unknown_option(cli, tmp_path):
    code, _, err = cli("fit", tmp_path / "nope.csv")
    assert code == 1 and "no such file" in err
    code, _, err = cli("fit", tmp_path / "nope.csv", "--no-such-option")
    assert code == 2 and "No such option" in err


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
