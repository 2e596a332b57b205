"""`escapestat run` through the CLI: outputs, the summary, and one-line errors."""

import json

import pandas as pd
import pytest
import torch
from testdata import FAST


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "fast.toml"
    path.write_text(FAST)
    return path


def test_run_json_and_files(cli, study_file, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("run", study_file, "--out", out, "--device", "cpu",
                               "--replicas", 12, "--max-steps", 2000, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert set(summary) == {"out", "counts", "notes", "conditions", "arrhenius"}
    assert sum(summary["counts"].values()) == 24
    assert {"rate", "rate_ci", "tau", "median", "weibull_shape", "poisson_pvalue"} <= set(
        summary["conditions"][0])
    fit = summary["arrhenius"][0]
    assert fit["theory_barrier"] > 0 and ("barrier_ratio" in fit or "error" in fit)
    escapes = pd.read_csv(out / "escapes.csv")
    assert len(escapes) == sum(summary["counts"].get(k, 0)
                               for k in ("escaped", "censored", "diverged"))
    assert {"lr_schedule", "weight_decay_schedule", "temperature_schedule",
            "batch_size_schedule", "grad_filter"} <= set(escapes.columns)
    assert (out / "replicas.csv").exists() and (out / "study.toml").read_text() == FAST
    meta = json.loads((out / "run.json").read_text())
    assert meta["config_hash"] and meta["status"] == "complete" and meta["check_every"] == 10
    # The survival table feeds the statistics commands as it is.
    code, stdout, _ = cli("fit", out / "escapes.csv", "--group-col", "temperature", "--json")
    assert code == 0 and len(json.loads(stdout)["groups"]) == 2


def test_run_human_summary(cli, study_file, tmp_path):
    code, stdout, stderr = cli("run", study_file, "--out", tmp_path / "r", "--device", "cpu",
                               "--max-steps", 1500)
    assert code == 0, stderr
    assert "Escape times per condition" in stdout and "theory" in stdout
    assert "escapes.csv" in stderr


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("max_steps", "max_stpes"), "did you mean 'max_steps'"),
        (lambda t: t.replace("lr = 0.25", "lr = -1"), "[dynamics] lr"),
        (lambda t: t.replace("depth = 3", "depth = 'three'"), "must be an integer"),
        (lambda t: t + "\n[[[", "not valid TOML"),
    ],
)
def test_bad_study_one_line(cli, tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(FAST))
    code, stdout, stderr = cli("run", path, "--out", tmp_path / "r")
    assert code == 1 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and message in stderr
    assert "Traceback" not in stderr


def test_existing_run_needs_resume(cli, study_file, tmp_path):
    out = tmp_path / "r"
    args = ("run", study_file, "--out", out, "--device", "cpu", "--max-steps", 300)
    assert cli(*args)[0] == 0
    before = (out / "escapes.csv").read_bytes()
    # The same, complete study again: read back and summarised, nothing rerun or lost.
    assert cli(*args)[0] == 0
    assert (out / "escapes.csv").read_bytes() == before
    # An unfinished run needs --resume; a different study is refused.
    meta = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    code, _, stderr = cli(*args)
    assert code == 1 and "--resume" in stderr
    assert cli(*args, "--resume")[0] == 0
    assert (out / "escapes.csv").read_bytes() == before
    code, _, stderr = cli("run", study_file, "--out", out, "--max-steps", 400, "--resume")
    assert code == 1 and "different study" in stderr
    assert (out / "escapes.csv").read_bytes() == before


def test_missing_study_and_bad_device(cli, study_file, tmp_path):
    code, _, stderr = cli("run", tmp_path / "nope.toml")
    assert code == 1 and "no such study file" in stderr
    code, _, stderr = cli("run", study_file, "--out", tmp_path / "r", "--device", "tpu")
    assert code == 2 and "'tpu' is not one of" in stderr  # a choice: a usage error
    assert "Value error" not in stderr  # typer's validation prefix, not for users
    assert len(stderr.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        code, _, stderr = cli("run", study_file, "--out", tmp_path / "c", "--device", "cuda")
        assert code == 1 and "no CUDA device" in stderr
    code, _, _ = cli("run", study_file, "--replicas", 0)
    assert code == 2  # a usage error from the option's range


def test_all_diverged_is_one_line_error_and_keeps_tables(cli, tmp_path):
    path = tmp_path / "div.toml"
    path.write_text(FAST.replace("lr = 0.25", "lr = 3.0").replace("max_steps = 3000",
                                                                   "max_steps = 200"))
    out = tmp_path / "r"
    code, stdout, stderr = cli("run", path, "--out", out, "--device", "cpu")
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "48 diverged" in lines[0]
    assert "Traceback" not in stderr
    replicas = pd.read_csv(out / "replicas.csv")
    assert (replicas["status"] == "diverged").all() and len(replicas) == 48


def test_help_names_study_sections(cli):
    code, stdout, _ = cli("run", "--help")
    assert code == 0 and "Override [run] replicas" in stdout


def test_an_unwritable_out_is_one_line(cli, study_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, stdout, stderr = cli("run", study_file, "--out", blocker / "run", "--device", "cpu")
    assert code == 1 and stdout == ""
    assert stderr.strip().startswith("error: ") and len(stderr.strip().splitlines()) == 1
    assert str(blocker) in stderr and "Not a directory" in stderr and "writable --out" in stderr


def test_a_full_disk_keeps_finished_chunks_and_resume_finishes_identically(
        cli, study_file, tmp_path, monkeypatch):
    """ENOSPC at the second of three chunks: one error line, the first chunk kept, and
    --resume (space freed) gives the bytes of an uninterrupted run."""
    import errno

    from escapestat.engine._storage import RunStore

    args = ("--device", "cpu", "--max-steps", 300)
    assert cli("run", study_file, "--out", tmp_path / "whole", *args)[0] == 0
    real = RunStore.write_chunk

    def full(self, index, *a, **k):
        if index == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.chunk_path(index)))
        return real(self, index, *a, **k)

    monkeypatch.setattr(RunStore, "write_chunk", full)
    out = tmp_path / "r"
    code, _, stderr = cli("run", study_file, "--out", out, *args)
    assert code == 1 and len(stderr.strip().splitlines()) == 2  # the bar's line, the error
    assert "No space left on device" in stderr and "--resume" in stderr
    assert sorted(p.name for p in (out / "chunks").glob("chunk-*.csv")) == ["chunk-00000.csv"]
    monkeypatch.setattr(RunStore, "write_chunk", real)
    assert cli("run", study_file, "--out", out, *args, "--resume")[0] == 0
    for name in ("escapes.csv", "replicas.csv"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_a_second_run_on_the_same_out_is_refused_with_the_holders_pid(cli, study_file,
                                                                         tmp_path):
    import os

    from escapestat.engine._storage import RunStore

    out = tmp_path / "r"
    with RunStore(out).locked():  # as a first `run` holds it while it trains
        code, _, stderr = cli("run", study_file, "--out", out, "--device", "cpu")
    assert code == 1 and f"pid {os.getpid()}" in stderr and "another escapestat" in stderr
    assert not (out / "run.json").exists()
    assert cli("run", study_file, "--out", out, "--device", "cpu", "--max-steps", 200)[0] == 0


def test_a_start_that_failed_does_not_block_a_rerun(cli, study_file, tmp_path):
    """A study that fails before its first chunk is written (a teacher strength that
    overflows the theory) leaves run.json, but no finished chunk: the corrected study
    then runs into the same --out without --resume."""
    bad = tmp_path / "bad.toml"
    bad.write_text(FAST.replace("strengths = [1.5, 1.0]", "strengths = [1e300, 1.0]"))
    out = tmp_path / "r"
    code, _, stderr = cli("run", bad, "--out", out, "--device", "cpu")
    assert code == 1 and "strength 1e+300" in stderr and "Traceback" not in stderr
    code, _, stderr = cli("run", study_file, "--out", out, "--device", "cpu", "--max-steps", 200)
    assert code == 0, stderr


@pytest.mark.parametrize("kinds", [("absorbing", "deterministic", "deterministic", "absorbing"),
                                   ("deterministic", "absorbing", "absorbing", "deterministic")])
def test_a_tied_mechanism_line_is_led_by_the_first_condition(kinds, monkeypatch):
    """Two verdicts tied 2–2: the first condition's leads, whatever the hash seed (a set's
    order made the line differ from one process to the next)."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    import escapestat_cli.run_cmd as run_cmd

    buf = io.StringIO()
    monkeypatch.setattr(run_cmd, "out_console", Console(file=buf, width=300))
    rows = [SimpleNamespace(verdict=k, verdict_reason="why") for k in kinds]
    run_cmd._print_verdicts(rows, lambda c: "T")
    assert buf.getvalue().startswith(f"mechanism: {kinds[0]} for 2 of 4;")
