"""Figures and the HTML report: readable labels, theory lines, a self-contained page."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text
from testdata import ladder

from escapestat.config._study import parse_study
from escapestat.engine._trials import run_study
from escapestat.report._figures import (
    arrhenius_figure,
    figure_png,
    fmt3,
    plot_arrhenius,
    plot_survival,
    survival_figure,
)
from escapestat.report._page import build_report, write_report
from escapestat.stats._arrhenius import fit_arrhenius
from escapestat.stats._synthetic import arrhenius_table
from escapestat.table._records import Columns

matplotlib.use("Agg")

BARRIER = 0.016569378320302697
LONG_T = 0.0020711722900378  # a temperature as the engine writes it: 16 digits
PNG = b"\x89PNG\r\n\x1a\n"

FAST = """
name = "report-fast"
[model]
depth = 3
strengths = [1.5, 1.0]
[data]
kind = "population"
[init]
kind = "aligned"
noise = 0.001
[dynamics]
noise = "langevin"
lr = 0.25
beta_over_beta_c = 0.5
barrier_over_temperature = [1.5, 2.5]
[escape]
commit_steps = 50
check_every = 10
[run]
replicas = 24
max_steps = 3000
seed = 3
"""


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text)]


def _ladder(theory: bool = True) -> pd.DataFrame:
    temps = [BARRIER / 3, BARRIER / 5, LONG_T]
    df = arrhenius_table(BARRIER, -np.log(120), temps, 64, 4e4, seed=2)
    if theory:
        df["barrier_theory"] = BARRIER
    return df


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    run_study(parse_study(FAST), out, device="cpu")
    return out


def _grokking_run(path):
    """A small grokking run directory written by hand: replicas, run.json, curves."""
    rng = np.random.default_rng(0)
    rows = []
    for cond, lr in enumerate((1e-3, 3e-3)):
        fit = rng.integers(2, 6, 8) * 100.0
        gen = fit + rng.integers(5, 15, 8) * 100.0
        rows.append(pd.DataFrame({
            "duration": gen, "event": 1, "status": "escaped", "temperature": lr / 64, "lr": lr,
            "batch_size": 64, "weight_decay": 1.0, "noise": "sgd", "barrier_theory": np.nan,
            "lr_schedule": "constant", "weight_decay_schedule": "constant",
            "temperature_schedule": "constant", "batch_size_schedule": "constant",
            "grad_filter": "none", "condition": cond, "replica": np.arange(8),
            "fit_time": fit, "generalize_time": gen}))
    path.mkdir()
    pd.concat(rows).to_csv(path / "replicas.csv", index=False)
    (path / "run.json").write_text(json.dumps({
        "study": "grok-tiny", "config_hash": "abc123", "seed": 0, "device": "cpu (2 threads)",
        "versions": {"escapestat": "0.1.0"}, "units": "steps", "check_every": 100,
        "max_steps": 3000, "status": "complete"}))
    steps = np.arange(0, 3001, 100)
    bands = []
    for cond in (0, 1):
        for metric, mid in (("train_accuracy", 1 - np.exp(-steps / 300)),
                            ("test_accuracy", 1 / (1 + np.exp(-(steps - 1500) / 200)))):
            bands.append(pd.DataFrame({"condition": cond, "metric": metric, "step": steps,
                                       "n": 8, "q10": mid * 0.9, "median": mid,
                                       "q90": np.minimum(mid * 1.1, 1)}))
    pd.concat(bands).to_csv(path / "curves.csv", index=False)
    return path


def _check_self_contained(html: str) -> list[bytes]:
    """No external URL in src/href; every <img> a base64 PNG that PIL can read."""
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:)?//""", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html
    srcs = re.findall(r"<img[^>]*\ssrc='([^']*)'", html)
    assert len(srcs) == html.count("<img")
    pngs = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG)
        pngs.append(data)
    pil = pytest.importorskip("PIL.Image")
    for data in pngs:
        with pil.open(io.BytesIO(data)) as im:
            im.verify()
    return pngs


def _check_markdown(md_path):
    md = md_path.read_text(encoding="utf-8")
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert refs
    for ref in refs:
        png = md_path.parent / ref
        assert png.is_file() and png.read_bytes().startswith(PNG)
    return md, refs


# ---------------------------------------------------------------- figures
def test_fmt3_keeps_three_significant_digits():
    assert fmt3(LONG_T) == "0.00207"
    assert fmt3(1234.5) == "1230" and fmt3(2765.0) == "2765" and fmt3(2.5e-6) == "2.5e-06"
    assert fmt3(None) == "—" and fmt3(float("inf")) == "∞" and fmt3(float("nan")) == "—"


def test_km_labels_use_three_digits_and_theory_barrier_over_t(tmp_path):
    df = _ladder()
    fig = survival_figure(df, Columns(group="temperature"))
    texts = _texts(fig)
    assert not any("0.0020711722900378" in t or "0.00207117" in t for t in texts)
    label = f"T = 0.00207 (ΔE/T = {BARRIER / LONG_T:.3g})"
    assert any(t.startswith(label + "\n") for t in texts)  # legend, with its counts below
    assert any(t == "fraction still trapped" for t in texts)
    figure_png(fig)
    # the existing call signature still writes a file
    assert plot_survival(df, Columns(group="temperature"), tmp_path / "km.png").is_file()


def test_km_without_theory_has_no_barrier_ratio():
    texts = _texts(survival_figure(_ladder(theory=False), Columns(group="temperature")))
    assert any(t.startswith("T = 0.00207") for t in texts)
    assert not any("ΔE/T" in t for t in texts)


def test_grokking_km_says_not_yet_generalised():
    df = _ladder(theory=False).assign(fit_time=10.0, generalize_time=lambda d: d["duration"])
    texts = _texts(survival_figure(df, Columns(group="temperature")))
    assert "fraction not yet generalised" in texts
    assert "fraction still trapped" not in texts


def test_arrhenius_theory_line_whenever_the_table_carries_a_barrier(tmp_path):
    df = _ladder()
    fit = fit_arrhenius(df, Columns(temperature="temperature"), crosscheck=False)
    labels = arrhenius_figure(fit, table=df).axes[0].get_legend_handles_labels()[1]
    assert any(lab.startswith(f"theory slope: ΔE = {BARRIER:.3g}") for lab in labels)
    assert any("band" in lab for lab in labels)
    plain = arrhenius_figure(fit).axes[0].get_legend_handles_labels()[1]
    assert not any("theory" in lab for lab in plain)
    bare = fit_arrhenius(_ladder(theory=False), Columns(temperature="temperature"),
                         crosscheck=False)
    none = arrhenius_figure(bare, table=_ladder(theory=False))
    assert not any("theory" in lab for lab in none.axes[0].get_legend_handles_labels()[1])
    # old signature: explicit --theory-barrier still works, positionally
    assert plot_arrhenius(bare, tmp_path / "a.png", 0.02, "step").is_file()


# ---------------------------------------------------------------- the report
def test_run_report_is_self_contained_with_a_markdown_twin(run_dir, tmp_path):
    out = tmp_path / "r" / "report.html"
    html_path, md_path = write_report(run_dir, out, n_bootstrap=49)
    assert html_path == out and md_path == tmp_path / "r" / "report.md"
    html = out.read_text(encoding="utf-8")
    pngs = _check_self_contained(html)
    assert len(pngs) >= 3  # KM, Arrhenius, Weibull diagnostic
    md, refs = _check_markdown(md_path)
    assert all(r.startswith("report_files/") for r in refs)
    assert len(refs) == len(pngs)
    for text in (html, md):
        assert "report-fast" in text and "config_hash" in text  # run.json metadata
        assert "Kaplan–Meier" in text and "Arrhenius" in text and "mechanism" in text
        assert not re.search(r"\d\.\d{8,}", text)  # no 16-digit temperatures anywhere
    assert "ΔE/T = 1.5" in html and "theory" in html


def test_report_does_not_touch_the_run(run_dir, tmp_path):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in run_dir.rglob("*") if p.is_file()}
    write_report(run_dir, tmp_path / "x.html", n_bootstrap=49)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in run_dir.rglob("*") if p.is_file()}
    assert before == after


def test_grokking_report_shows_curves(tmp_path):
    run = _grokking_run(tmp_path / "grok")
    report = build_report(run, n_bootstrap=49)
    titles = [s.title for s in report.sections]
    assert "Learning curves" in titles and "Arrhenius" not in titles
    html = report.html()
    _check_self_contained(html)
    assert "grokked" in html and "lr = 0.001" in html


def test_table_report_with_schedules_and_default_out(cli, tmp_path):
    df = _ladder()
    df["condition"] = pd.factorize(df["temperature"])[0]
    df["lr"] = 0.25
    df["temperature_schedule"] = "constant"
    cosine = {"shape": "cosine", "start": 0.006, "end": 0.002, "steps": 10000}
    df.loc[df["condition"] == 1, "temperature_schedule"] = json.dumps(cosine)
    path = tmp_path / "escapes.csv"
    df.to_csv(path, index=False)
    code, stdout, err = cli("report", path, "--bootstrap", "49")
    assert code == 0, err
    out = tmp_path / "escapes-report.html"
    html = out.read_text(encoding="utf-8")
    _check_self_contained(html)
    _check_markdown(tmp_path / "escapes-report.md")
    assert "Schedules" in html and "cosine" in html


def _search_folder(path, n_trials: int):
    import optuna

    path.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{path / 'optuna.db'}", study_name="s",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("dynamics.lr", 1e-3, 1e-1, log=True)
                              + t.suggest_float("dynamics.temperature.c", 0.0, 1.0) ** 2),
                   n_trials=n_trials)
    arms = [{"arm": "best-1", "source": "search trial 0", "n": 8, "events": 8,
             "params": {"dynamics.temperature.shape": "log", "dynamics.temperature.c": 0.0069,
                        "dynamics.temperature.t0": 3292},
             "median": 500.0, "median_ci": [300.0, 800.0], "ratio_vs_default": 0.0336,
             "ratio_vs_default_ci": [0.02, 0.06], "logrank_p_vs_default": 3e-29},
            {"arm": "default", "source": "baseline", "n": 8, "events": 6,
             "params": {"dynamics.temperature": 0.0027615}, "median": 14900.0,
             "median_ci": [11500.0, None]}]
    (path / "compare.json").write_text(json.dumps(arms))
    return path


def test_search_report_has_history_importances_and_arms(tmp_path):
    folder = _search_folder(tmp_path / "search", 12)
    digest = hashlib.sha256((folder / "optuna.db").read_bytes()).hexdigest()
    html_path, md_path = write_report(folder)
    assert html_path == folder / "report.html"
    assert hashlib.sha256((folder / "optuna.db").read_bytes()).hexdigest() == digest
    html = html_path.read_text(encoding="utf-8")
    _check_self_contained(html)
    _, refs = _check_markdown(md_path)
    names = {r.split("/")[-1] for r in refs}
    assert {"history-s.png", "importance-s.png", "arms.png", "arm-schedules.png"} <= names
    assert "best-1" in html and "× default" in html


def test_search_report_skips_importances_it_cannot_compute(tmp_path):
    folder = _search_folder(tmp_path / "few", 1)
    report = build_report(folder)
    text = " ".join(b for s in report.sections for b in s.blocks if isinstance(b, str))
    assert "importances not shown" in text
    assert any(f.name == "history-s" for f in report.figures)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such file"),
    (lambda p: p, "not a run directory"),
    (lambda p: (p / "t.json").write_text("{}") and p / "t.json", "unknown table format"),
])
def test_bad_path_is_one_error_line(cli, tmp_path, make, message):
    target = make(tmp_path)
    code, stdout, err = cli("report", target, "--out", tmp_path / "r.html")
    assert code == 1 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in err


def test_bad_out_is_one_error_line(cli, tmp_path):
    path = tmp_path / "e.csv"
    _ladder().to_csv(path, index=False)
    code, _, err = cli("report", path, "--out", tmp_path / "report.md")
    assert code == 1 and len(err.strip().splitlines()) == 1 and ".html" in err


def test_a_table_without_a_condition_column_is_grouped_by_what_varies(tmp_path):
    """Never pooled silently: a user's table whose lr and wd vary gets one group each."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"duration": np.ceil(rng.exponential(100, 80)), "event": 1,
                       "lr": np.repeat([0.01, 0.02], 40), "weight_decay": np.tile([1, 3], 40),
                       "seed": np.arange(80)})
    df.to_csv(tmp_path / "t.csv", index=False)
    report = build_report(tmp_path / "t.csv")
    (table,) = [b for s in report.sections if s.title == "Per group" for b in s.blocks]
    assert sorted(table.frame["group"]) == [
        "lr = 0.01, weight_decay = 1", "lr = 0.01, weight_decay = 3",
        "lr = 0.02, weight_decay = 1", "lr = 0.02, weight_decay = 3"]
    assert (table.frame["n"] == 20).all()


def test_km_figure_states_n_budget_and_censoring_and_draws_a_group_without_escapes():
    import numpy as np
    import pandas as pd

    from escapestat.report._figures import survival_figure
    from escapestat.table._records import Columns

    df = pd.DataFrame({"duration": np.r_[np.arange(10, 110, 10.0), np.full(8, 500.0)],
                       "event": np.r_[np.ones(10, int), np.zeros(8, int)],
                       "temperature": [0.1] * 10 + [0.01] * 8})
    fig = survival_figure(df, Columns(group="temperature"), log_time=True)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("no escapes by 500 (n 8)" in t for t in texts), texts
    assert any("n 10: 10 escaped, 0 censored" in t for t in texts), texts
    assert "n 18" in ax.get_title() and "censored at ≤ 500 steps" in ax.get_title()
    assert ax.get_xscale() == "log" and len(ax.get_lines()) >= 2


def test_report_draws_a_given_theory_barrier_and_flags_heterogeneity(cli, tmp_path):
    import numpy as np

    path = tmp_path / "het.csv"
    ladder(np.random.default_rng(1), theta=0.5).to_csv(path, index=False)
    code, _, err = cli("report", path, "--theory-barrier", 0.0164)
    assert code == 0, err
    md = (tmp_path / "het-report.md").read_text(encoding="utf-8")
    assert "theory 0.0164, fitted/theory" in md
    assert "the replicas escape at different rates" in md
    code, _, err = cli("report", path, "--theory-barrier", -1)
    assert code == 2 and "must be a finite number > 0" in err


def test_learning_curves_draw_the_threshold_and_labels_say_full_batch():
    import pandas as pd

    from escapestat.report._figures import curves_figure
    from escapestat.report._run_page import condition_labels

    curves = pd.DataFrame({"condition": 0, "metric": ["train_accuracy", "test_accuracy"] * 2,
                           "step": [0, 0, 50, 50], "n": 4, "q10": 0.1, "median": 0.5,
                           "q90": 0.9})
    ax = curves_figure(curves, threshold=0.95).axes[0]
    assert any(line.get_label() == "escape threshold (0.95)" for line in ax.get_lines())
    replicas = pd.DataFrame({"condition": [0, 1], "lr": 1e-3, "weight_decay": 1.0,
                             "batch_size": [64, 370], "full_batch": [False, True],
                             "fit_time": 1.0, "temperature": [1e-3 / 64, 1e-3 / 370],
                             "noise": "sgd"})
    labels = condition_labels(replicas)
    assert labels[1].endswith("B = 370 (full batch)") and labels[0].endswith("B = 64")


def test_history_names_the_objective_and_shows_pruned_trials(tmp_path):
    import matplotlib.pyplot as plt
    import optuna

    from escapestat.report._search_page import _objective_name, _pruned_marks
    from escapestat.search._identity import IDENTITY_ATTR

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr(IDENTITY_ATTR, {"search.objective": "rmst"})

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        trial.report(5.0 + x, 1)
        if trial.number % 2:
            raise optuna.TrialPruned()
        return 5.0 + x

    study.optimize(objective, n_trials=6)
    assert _objective_name(study).startswith("log restricted mean time")
    fig, ax = plt.subplots()
    _pruned_marks(ax, study.trials)
    (marks,) = ax.collections
    assert len(marks.get_offsets()) == 3 and "pruned" in ax.get_legend().get_texts()[0].get_text()
    plt.close(fig)


def test_arm_schedules_show_a_constant_that_differs_between_arms():
    """lr 0.02 in one arm, 7e-4 in another (28×), weight decay scheduled in one: both are
    drawn (0.6 drew only the schedule)."""
    from escapestat.report._search_page import _arm_schedules

    arms = [{"arm": "best-1", "params": {"dynamics.lr": 0.02,
                                         "dynamics.weight_decay.shape": "cosine",
                                         "dynamics.weight_decay.start": 2.0,
                                         "dynamics.weight_decay.end": 0.5,
                                         "dynamics.weight_decay.steps": 500}},
            {"arm": "default", "params": {"dynamics.lr": 7e-4,
                                          "dynamics.weight_decay": 1.0}},
            {"arm": "same-lr", "params": {"dynamics.batch_size": 64}}]
    out = _arm_schedules(arms)
    assert set(out) == {"lr", "weight_decay"}
    assert set(out["lr"]) == {"best-1", "default"}
    two = [{"arm": a, "params": {"dynamics.lr": 0.01}} for a in ("x", "y")]
    assert _arm_schedules(two) == {}  # the same constant everywhere: nothing to show


def _chromium() -> str:
    """The headless browser, or skip (fail under CI, which installs it)."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: chromium not found", pytrace=False)
        pytest.skip("chromium not installed")
    return found


def test_compare_tables_fit_a_1280_pixel_screen(tmp_path):
    """Laid out by a real Chromium at 1280 px: no table of a search report scrolls (one
    14-column compare table did); each table's scrollWidth is within the page's column."""
    folder = _search_folder(tmp_path / "search", 6)
    arms = json.loads((folder / "compare.json").read_text())
    for a in arms:  # every column a full search writes, the long ones filled
        a.update({"diverged": 0, "final_test_error": 0.0053, "ratio_vs_best_constant": 1.4,
                  "ratio_vs_best_constant_ci": [1.4, 1.4], "time_ratio_vs_best_constant": 1.38,
                  "time_ratio_vs_best_constant_ci": [1.31, 1.45], "wall_ratio_vs_default": 0.91,
                  "ratio_vs_ablation": 1.0, "ratio_vs_ablation_ci": [1.0, 1.0],
                  "schedule_verdict": "no faster than its ablation (held at its start)"})
    arms[0]["params"] = {"dynamics.lr": 0.033, "dynamics.batch_size": 128,
                         "dynamics.weight_decay.shape": "cosine",
                         "dynamics.weight_decay.start": 0.95, "dynamics.weight_decay.end": 0.14,
                         "dynamics.weight_decay.steps": 1175}
    (folder / "compare.json").write_text(json.dumps(arms))
    html_path, _ = write_report(folder)
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text(encoding="utf-8").replace(
        "</body>", "<script>document.body.dataset.widths = [...document.querySelectorAll("
        "'table')].map(t => t.scrollWidth + '/' + t.parentElement.clientWidth).join(' ');"
        "</script></body>"), encoding="utf-8")
    done = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--window-size=1280,2000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'data-widths="([^"]*)"', done.stdout)
    assert found, done.stderr[-2000:]
    pairs = [tuple(map(int, w.split("/"))) for w in found.group(1).split()]
    assert pairs and all(0 < table <= room for table, room in pairs), pairs
