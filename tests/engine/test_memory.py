"""Sizes that pass validation but cannot fit are refused before anything is allocated,
with one line naming the need, the memory available and the key to lower."""

from __future__ import annotations

import pytest
from testdata import ROOT

from escapestat.config._study import conditions, load_study, parse_study
from escapestat.engine import _memory as memory
from escapestat.engine._trials import plan_chunks

STUDIES = ROOT / "studies"
GROK = (STUDIES / "grok-modadd.toml").read_text(encoding="utf-8")


@pytest.fixture
def eight_gib(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 8 * 2**30)


@pytest.mark.parametrize("old, new, message", [
    ("replicas = 64", "replicas = 1000000000", "planning the chunks alone needs about"),
    ("p = 23", "p = 50000", "one replica does not fit"),
    ("p = 23", "p = 1000000", "one replica does not fit"),
    ("width = 128", "width = 100000000", "one replica does not fit"),
])
def test_sizes_that_cannot_fit_are_refused_before_allocating(eight_gib, old, new, message):
    study = parse_study(GROK.replace(old, new))
    with pytest.raises(Exception) as err:
        plan_chunks(study, conditions(study))
    assert message in str(err.value) and "8 GiB is available" in str(err.value)


def test_a_chunk_too_large_names_chunk_replicas(eight_gib):
    study = parse_study(GROK.replace('batch_size = [16, 64, "full"]', 'batch_size = "full"')
                        .replace("p = 23", "p = 701").replace("replicas = 64",
                                                              "replicas = 4096"))
    with pytest.raises(Exception, match=r"lower \[run\] chunk_replicas \(to about"):
        plan_chunks(study, conditions(study))


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_fits_in_eight_gib(eight_gib, path):
    if "[sweep]" in path.read_text(encoding="utf-8"):
        return  # sweep files are not run studies
    study = load_study(path)
    memory.check_memory(study, len(conditions(study)))


def test_a_refused_run_leaves_no_run_directory(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 8 * 2**30)
    path = tmp_path / "big.toml"
    path.write_text(GROK.replace("p = 23", "p = 50000"))
    code, _, err = cli("run", path, "--out", tmp_path / "r")
    assert code == 1 and "one replica does not fit" in err
    assert not (tmp_path / "r").exists()
