"""`make bench`'s harness (benchmarks/headline.py), smoke-run on a small state: every
headline row is reported, a smoke run judges no target, and a baseline checkout's rounds
import the package from that checkout's tree alone. No timing is asserted."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEADLINE = REPO / "benchmarks" / "headline.py"


def package_tree_copy(destination: Path) -> Path:
    """A copy of this checkout's package, standing in for another checkout's tree."""
    archive = destination.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(REPO / "metaflow_extensions", arcname="metaflow_extensions",
                filter=lambda info: None if "__pycache__" in info.name else info)
    with tarfile.open(archive) as tar:
        tar.extractall(destination)
    return destination


@pytest.mark.slow
def test_a_smoke_run_against_a_baseline_tree(tmp_path):
    baseline = package_tree_copy(tmp_path / "baseline")
    output = tmp_path / "results.md"
    subprocess.run(
        [sys.executable, str(HEADLINE), "--quick", "--rounds", "1", "--size-mb", "8",
         "--baseline", str(baseline), "--baseline-label", "the copy",
         "--output", str(output), "--workdir", str(tmp_path / "work")],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "USERNAME": "tester"},
    )
    report = output.read_text()
    for row in ("load in place into a built model", "load into new tensors (a notebook)", "sync re-save, 10 % changed",
                "a step's first background save ever (no earlier one to size a buffer by), blocked",
                "a resumed task's first background save, blocked",
                "the next run's first background save (its step saved in the background before), blocked",
                "tiny state (3 fields), saves per second, defaults"):
        assert "| %s |" % row in report, row
    assert "**missed**" not in report and ": met" not in report  # 8 MB: not judged
    assert "not judged (the targets are for 1024 MB)" in report or "machine busy: rerun" in report
    assert "## this checkout against the copy, side by side" in report
    raw = json.loads(output.with_suffix(".json").read_text())
    assert raw["checkouts"]["the copy"]["tree"] == str(baseline)
    assert raw["checkouts"]["this checkout"]["cases"]["ours: load into new tensors"]["samples"]


def test_a_baseline_that_is_no_checkout_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, str(HEADLINE), "--quick", "--baseline", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert result.returncode != 0
    assert "no metaflow_extensions/implicit_checkpoint/engine there" in result.stdout
