"""The one-shot device check (scripts/gpu_check.sh) and its benchmark, on a machine
without CUDA: the dry run prints what it would install and run; a real run refuses
without a GPU and says how to see the plan; the benchmark's smoke run prints every
figure it would on the GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.flow

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def run_check(*arguments, tmp_path, wheels=None):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"))
    if wheels is not None:
        env["GPU_WHEELS"] = str(wheels)
    return subprocess.run(
        ["bash", str(CHECK), *arguments], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120
    )


@needs_no_cuda
def test_the_dry_run_prints_what_it_would_install_and_run(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("metaflow-2.19.39-py2.py3-none-any.whl", "blake3-1.0.11-cp312-cp312-manylinux_2_17_x86_64.whl"):
        (wheels / name).write_bytes(b"PK")
    result = run_check("--dry-run", tmp_path=tmp_path, wheels=wheels)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "no CUDA device here: a dry run only" in out
    assert "2 wheels" in out and "metaflow-2.19.39-py2.py3-none-any.whl" in out
    assert "would run: %s -m pip install" % sys.executable in out
    assert "--no-index --find-links %s" % wheels in out and "metaflow blake3 boto3 pytest" in out
    assert "-m pytest -q -rs -p no:cacheprovider tests/test_cuda.py" in out
    assert "benchmarks/gpu_bench.py --sizes-gb 1,10" in out
    assert "gpu_bench plan:" in out and "dcp.async_save (pinned stager), blocked" in out
    assert "dry run (nothing installed or run)" in out
    assert not (tmp_path / "out").exists()  # nothing ran: no results folder


@needs_no_cuda
def test_the_dry_run_without_wheels_says_how_to_get_them(tmp_path):
    result = run_check("--dry-run", tmp_path=tmp_path, wheels=tmp_path / "absent")
    assert result.returncode == 0
    assert "no wheels in %s/: run scripts/fetch_gpu_wheels.sh" % (tmp_path / "absent") in result.stdout


@needs_no_cuda
def test_a_real_run_without_cuda_refuses_and_names_the_dry_run(tmp_path):
    result = run_check(tmp_path=tmp_path)
    assert result.returncode == 2
    assert "no CUDA device on this machine" in result.stderr and "--dry-run" in result.stderr


def test_an_unknown_argument_is_refused(tmp_path):
    result = run_check("--fast", tmp_path=tmp_path)
    assert result.returncode == 64 and "unknown argument --fast" in result.stderr


def test_the_benchmark_smoke_run_prints_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--smoke", "--work", str(tmp_path), "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    (size,) = [k for k in figures if k != "training"]
    for case in ("ours: save()", "ours: save(blocking=False), blocked", "ours: load() in place", "dcp.save",
                 "dcp.async_save (pinned stager), until committed", "dcp.load", "torch.save", "limit: write + fdatasync"):
        assert figures[size][case]["median"] > 0, case
    assert figures["training"]["saves in the window"] >= 1
    assert "targets:" in result.stdout and "throughput kept >= 99 %" in result.stdout
