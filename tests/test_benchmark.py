"""scripts/benchmark.py runs end to end on a tiny setting and prints every figure (no timing is asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from helpers import REPO, load_script

from pix2rep_bundle.profiling import STAGES


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
        "machine fp32 limit: 2048 x 2048 matmul",
        "conv2d 4 -> 4 3x3 on 4 x 48 x 48 (the network's first block)",
        "breakdown of a step (the config's own pieces):",
        "GFLOP per pair",
        "achieved / limit:",
    ):
        assert line in out, line
    for _, label in STAGES:  # every stage, in ms per step and as a share, for both paths
        assert out.count(f"    {label}: ") == 2, label
    shares = [float(s) for s in re.findall(r"ms per step, ([0-9.]+) %", out)]
    assert len(shares) == 2 * len(STAGES)
    for path_shares in (shares[: len(STAGES)], shares[len(STAGES) :]):
        assert sum(path_shares) == pytest.approx(100.0, abs=0.1 * len(STAGES))  # printed to 0.1 %
    assert set(figures) == {"plain", "fast", "fast_over_plain", "fast_over_plain_loop", "machine_limit"}
    assert figures["machine_limit"]["matmul_gflops"] > 0 and figures["machine_limit"]["conv_gflops"] > 0
    for path in ("plain", "fast"):
        parts = figures[path].pop("breakdown")
        assert parts["share_sum"] == pytest.approx(100.0)
        stages = sum(parts[f"{name}_ms"] for name, _ in STAGES)
        assert parts["step_ms"] == pytest.approx(stages) and all(parts[f"{name}_ms"] > 0 for name, _ in STAGES)
        # batch 2 pairs; the loss's share depends on how many pixels of the batch are valid (up to 1000)
        assert parts["gflops_per_pair"] == pytest.approx(figures[path]["gflops_per_step"] / 2, rel=0.1)
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


def test_compare_measures_named_settings_side_by_side(tmp_path, capsys):
    """--compare: every named setting measured in each repetition, in turn; a table with the ratios to the first."""
    settings = {"a": {"amp": False}, "b": {"amp": False, "view_settings": {"view_size": [32, 32]}}}
    figures = load_script("benchmark").main(
        quick=True, bundle_root=str(tmp_path), num_workers=0, compare=settings, repeats=2, breakdown=False
    )
    out = capsys.readouterr().out
    order = re.findall(r"\[(\d)/2\] (\w+):", out)
    assert order == [("1", "a"), ("1", "b"), ("2", "a"), ("2", "b")]  # interleaved
    assert "| setting | the config's trainer, pairs/s (each repetition) | median | x the first |" in out
    assert figures["a"]["ratio"] == 1.0 and len(figures["b"]["trainer_pairs_per_s"]) == 2
    assert re.search(r"\| b \| [0-9.]+, [0-9.]+ \| [0-9.]+ \| [0-9.]+x \|", out)


def test_compare_names_an_unknown_preset():
    with pytest.raises(ValueError, match=r"--compare: unknown setting\(s\) \['turbo'\]: choose among"):
        load_script("benchmark").main(compare="recipe,turbo")


def test_the_presets_are_the_recipe_and_its_levers():
    """The reference of the comparison is the 0.9.0 recipe in fp32; the other presets change only speed settings."""
    presets = load_script("benchmark").PRESETS
    views = {"zoom_offset": False, "translate_fraction": 0.15}
    assert presets["recipe"] == {
        "augment_on_device": True,
        "amp": False,
        "channels_last": False,
        "compile": False,
        "view_settings": views,
    }
    assert presets["view64"]["view_settings"] == views | {"view_size": [64, 64]}


def test_unknown_path_is_named():
    with pytest.raises(ValueError, match="unknown path"):
        load_script("benchmark").main(paths="plain,turbo")


@pytest.mark.parametrize(
    "setting",
    [{"steps": 0}, {"warmup": 0}, {"batch_size": -2}, {"image_size": "big"}, {"num_workers": -1}, {"repeats": 0}],
)
def test_malformed_counts_are_named(setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"--{name} must be a whole number"):
        load_script("benchmark").main(**setting)


def test_breakdown_reads_a_word_as_the_command_line_gives_it():
    with pytest.raises(ValueError, match="--breakdown must be true or false, got 'maybe'"):
        load_script("benchmark").main(breakdown="maybe")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_stops_clearly_without_cuda():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_check.py")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "no CUDA device is available" in done.stderr and "Traceback" not in done.stderr
