"""Conformance: every ONNX node test that ONNX Runtime runs keeps its outputs through the
default chain, fuse with opsets raised, and each built-in pass alone (tests/conformance.py).
The cases are split in twelve shards, which pytest-xdist spreads over the cores. Run alone:
python -m pytest -n auto tests/test_conformance.py."""

from __future__ import annotations

import fcntl
import pickle
from collections import Counter

import pytest

import conformance

SHARDS = 12


@pytest.fixture(scope="session")
def all_cases(tmp_path_factory, worker_id) -> list:
    """The node test cases, generated once per test run: ONNX generates them by running each
    operator's reference code (about ten seconds), and every xdist worker needs them. The
    first worker pickles them into the run's own temporary folder (pytest-xdist's recipe for
    session data shared between workers); the others wait for it and read them."""
    if worker_id == "master":
        return conformance.cases()
    shared = tmp_path_factory.getbasetemp().parent / "onnx-node-cases.pickle"
    with open(shared.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not shared.exists():
            partial = shared.with_suffix(".partial")
            partial.write_bytes(pickle.dumps(conformance.cases()))
            partial.replace(shared)
        return pickle.loads(shared.read_bytes())


@pytest.mark.parametrize("shard", range(SHARDS))
def test_every_node_test_keeps_its_outputs_through_every_pass(shard, all_cases):
    cases = all_cases[shard::SHARDS]
    outcomes = [outcome for case in cases for outcome in conformance.check_case(case)]
    counted = {o.case for o in outcomes}
    # 1,615 of the 1,884 cases run on ONNX Runtime here; each shard holds about a twelfth.
    assert len(counted) > 1500 / SHARDS, f"only {len(counted)} node tests ran on ONNX Runtime"
    assert {o.chain for o in outcomes} >= {"default", "fuse-opset-20", "cleanup", "fold-constants"}
    failures = [o for o in outcomes if o.verdict in ("crash", "broken")]
    summary = Counter((o.chain, o.verdict) for o in failures)
    details = "\n".join(f"{o.chain}: {o.case}: {o.verdict}: {o.detail}" for o in failures[:40])
    assert not failures, f"{dict(summary)}\n{details}"
