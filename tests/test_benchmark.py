"""scripts/benchmark.py runs end to end on a tiny setting and prints every figure (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import REPO, load_script


def test_benchmark_smoke(tmp_path, capsys):
    """Both paths, one after the other, print every figure and the ratio (a smoke test: nothing is timed)."""
    figures = load_script("benchmark").main(quick=True, bundle_root=str(tmp_path), num_workers=0)
    out = capsys.readouterr().out
    for line in (
        "plain path:",
        "fast path: augment_on_device True",
        "data pipeline alone:",
        "training step alone:",
        "end to end:",
        "FLOPs:",
        "peak memory:",
        "the config's trainer (train#trainer.run()",
        "fast / plain, hand-written loop, end to end:",
        "fast / plain, the config's trainer:",
    ):
        assert line in out, line
    assert set(figures) == {"plain", "fast", "fast_over_plain", "fast_over_plain_loop"}
    for path in ("plain", "fast"):
        assert set(figures[path]) == {
            "data_pairs_per_s",
            "step_pairs_per_s",
            "end_to_end_pairs_per_s",
            "tflops_per_s",
            "gflops_per_step",
            "peak_memory_gib",
            "trainer_pairs_per_s",
        }
        assert all(v > 0 for v in figures[path].values())
    assert figures["plain"]["gflops_per_step"] == figures["fast"]["gflops_per_step"]  # the same network
    assert figures["fast_over_plain"] > 0


def test_unknown_path_is_named():
    with pytest.raises(ValueError, match="unknown path"):
        load_script("benchmark").main(paths="plain,turbo")


@pytest.mark.parametrize(
    "setting", [{"steps": 0}, {"warmup": 0}, {"batch_size": -2}, {"image_size": "big"}, {"num_workers": -1}]
)
def test_malformed_counts_are_named(setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"--{name} must be a whole number"):
        load_script("benchmark").main(**setting)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_stops_clearly_without_cuda():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_check.py")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "no CUDA device is available" in done.stderr and "Traceback" not in done.stderr
