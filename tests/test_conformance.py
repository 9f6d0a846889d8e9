"""Conformance: every ONNX node test that ONNX Runtime runs keeps its outputs through the
default chain, fuse with opsets raised, and each built-in pass alone (tests/conformance.py).
Run alone: python -m pytest tests/test_conformance.py."""

from __future__ import annotations

import multiprocessing
from collections import Counter

import conformance


def test_every_node_test_keeps_its_outputs_through_every_pass():
    cases = conformance.cases()
    # Workers are forked after the cases are built; each case runs every chain.
    with multiprocessing.get_context("fork").Pool(2) as pool:
        outcomes = [
            o for found in pool.imap_unordered(conformance.check_case, cases, 4) for o in found
        ]
    counted = {o.case for o in outcomes}
    assert len(counted) > 1400, f"only {len(counted)} node tests ran on ONNX Runtime"
    assert {o.chain for o in outcomes} >= {"default", "fuse-opset-20", "cleanup", "fold-constants"}
    failures = [o for o in outcomes if o.verdict in ("crash", "broken")]
    summary = Counter((o.chain, o.verdict) for o in failures)
    details = "\n".join(f"{o.chain}: {o.case}: {o.verdict}: {o.detail}" for o in failures[:40])
    assert not failures, f"{dict(summary)}\n{details}"
