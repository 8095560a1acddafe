"""Cluster executors refuse clearly, before submitting anything, when there is no cluster to use."""

from __future__ import annotations

import os
import socket

from tests.helpers import cluster_spec, reidbench


def test_slurm_without_sbatch_is_a_clear_error(tmp_path):
    spec = cluster_spec(tmp_path)
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    run = reidbench("run", spec, "--store", "store", "--executor", "slurm", cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "needs SLURM's sbatch, which is not on PATH" in run.stderr
    assert not (tmp_path / "store" / "manifest").exists()


def test_an_unreachable_ray_address_is_a_clear_error(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = cluster_spec(tmp_path)
    run = reidbench(
        "run",
        spec,
        "--store",
        "store",
        "--executor",
        "ray",
        "--ray-address",
        f"127.0.0.1:{port}",
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert f"cannot reach a Ray cluster at '127.0.0.1:{port}'" in run.stderr and "--ray-address" in run.stderr
    assert not (tmp_path / "store" / "rows").exists()
