"""scripts/benchmark.py runs end to end on a tiny setting and prints every figure (no timing is asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke(tmp_path, capsys):
    figures = load_script().main(quick=True, bundle_root=str(tmp_path), num_workers=0)
    out = capsys.readouterr().out
    for line in ("data pipeline alone:", "training step alone:", "end to end:", "FLOPs:", "peak memory:"):
        assert line in out, line
    assert set(figures) == {"data_pairs_per_s", "step_pairs_per_s", "end_to_end_pairs_per_s", "tflops_per_s",
                            "gflops_per_step"}
    assert all(v > 0 for v in figures.values())
