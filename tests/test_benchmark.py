"""scripts/benchmark.py runs end to end on a tiny setting and prints every figure (no timing is asserted)."""

from __future__ import annotations

import importlib.util

import pytest
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke(tmp_path, capsys):
    """Both paths, one after the other, print every figure and the ratio (a smoke test: nothing is timed)."""
    figures = load_script().main(quick=True, bundle_root=str(tmp_path), num_workers=0)
    out = capsys.readouterr().out
    for line in ("plain path:", "fast path: augment_on_device True", "data pipeline alone:", "training step alone:",
                 "end to end:", "FLOPs:", "peak memory:", "fast / plain, end to end:"):
        assert line in out, line
    assert set(figures) == {"plain", "fast", "fast_over_plain"}
    for path in ("plain", "fast"):
        assert set(figures[path]) == {"data_pairs_per_s", "step_pairs_per_s", "end_to_end_pairs_per_s",
                                      "tflops_per_s", "gflops_per_step", "peak_memory_gib"}
        assert all(v > 0 for v in figures[path].values())
    assert figures["plain"]["gflops_per_step"] == figures["fast"]["gflops_per_step"]  # the same network
    assert figures["fast_over_plain"] > 0


def test_unknown_path_is_named():
    with pytest.raises(ValueError, match="unknown path"):
        load_script().main(paths="plain,turbo")
