"""The Ray backend on a real local Ray instance gives the local pool's results, byte for byte."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from tiny_sweep import tiny_base

from simserve.cli import main
from simserve.errors import InputError
from simserve.experiments.backends import RayBackend, check_ray_address
from simserve.experiments.pool import RunPool
from simserve.experiments.sweep import load_sweep_spec, plan_sweep, run_sweep

BASE = tiny_base(30)

SPEC = """\
name: ray_sweep
base: base.yaml
grid:
  engine.policy: [prefill_first, chunked_prefill]
  workload.arrival.rate: [10, 40]
replications: 2
"""


def _spec(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def _closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_and_local_backends_write_the_same_sweep(tmp_path):
    pytest.importorskip("ray")
    plan = plan_sweep(load_sweep_spec(_spec(tmp_path)))
    with RunPool(2) as local:
        run_sweep(plan, tmp_path / "local", local)
    with RunPool(backend=RayBackend(jobs=2)) as ray_pool:
        assert "ray (local instance)" in ray_pool.describe()
        outcome = run_sweep(plan, tmp_path / "ray", ray_pool)
    assert outcome.num_ran == 8 and not outcome.errors
    for name in ("summary.csv", "summary_by_point.csv"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    for run in plan.runs:
        rel = Path("points") / run.run_id / "summary.json"
        assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes()


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_unreachable_ray_address_is_one_line_exit_2_and_nothing_written(tmp_path, capsys,
                                                                         address):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    address = address.format(port=_closed_port())
    code = main(["sweep", str(_spec(tmp_path)), "--backend", "ray", "--address", address,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "cannot reach a Ray cluster" in err and address in err
    assert not out.exists()


@pytest.mark.parametrize("address", ["nonsense", "host:port", ":6379"])
def test_malformed_ray_address_is_refused(address):
    with pytest.raises(InputError, match="HOST:PORT"):
        check_ray_address(address)
