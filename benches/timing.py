"""Timing helpers shared by the Python side-by-side benches; they live in the package
(`sos_rs.bench.timing`) so the `sos bench` command uses the same code."""

from __future__ import annotations

from sos_rs.bench.timing import gflops, interleaved_medians

__all__ = ["gflops", "interleaved_medians"]
