"""Pretraining speed, one line per figure, for the configs' own trainer and for a hand-written loop over the
config's pieces (data pipeline alone, training step alone, end to end, peak memory and achieved TFLOP/s, FLOPs
counted by ``torch.utils.flop_counter`` on one step).

Everything is built by ``configs/pretrain.yaml`` itself (the real dataset, paired views, network, loss and
optimiser), on the embedded phantom unless ``--dataset_dir`` is given:

    python scripts/benchmark.py                                  # CPU, the profile's image size, batch 8
    python scripts/benchmark.py --image_size 192 --batch_size 64 --profile paper   # a GPU
    python scripts/benchmark.py --quick                          # a few tiny steps (the CI smoke test)

Two paths are measured in the same run, and the ratios printed: ``plain`` (per-sample MONAI transforms in loader
workers, fp32) and ``fast`` (the pretraining config's switches: ``augment_on_device``, bf16 ``amp`` where the device
computes bf16 natively, ``channels_last`` on a GPU, ``--compile true`` if asked). ``--paths fast`` measures one.
The figure that users get is the trainer's (``train#trainer.run()`` of the parsed config, its loader and handlers
included); the hand-written loop splits it into data pipeline and step, and the breakdown
(:mod:`pix2rep_bundle.profiling`) times each of the config's own pieces per step (loader, views and alignment,
network forward and backward, loss forward and backward, optimiser, validation) with its share, the FLOPs per pair,
and the machine's fp32 limit measured in the same run (a 2048 x 2048 matrix product, a convolution of the network's
first block), with achieved / limit.

``--compare`` measures named settings side by side in one run, repetitions interleaved (A, B, A, B, ...) so that
every setting shares the machine's noise: ``--compare recipe,fast`` (the presets of
:data:`pix2rep_bundle.benchmarking.PRESETS`) or a dict ``--compare '{"name": {overrides}, ...}'``; the first is the
reference of the ratios:

    python scripts/benchmark.py --compare recipe,view64,fast --repeats 3
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser

from pix2rep_bundle.benchmarking import (  # noqa: F401 (PRESETS: the presets of --compare, named here too)
    PLAIN,
    PRESETS,
    build,
    check_counts,
    fast_path,
    machine_limit,
    measure,
    measure_engine,
    parse_compare,
    temporary_run,
)
from pix2rep_bundle.profiling import Breakdown, step_breakdown
from pix2rep_bundle.settings import as_bool

BUNDLE = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = str(BUNDLE)  # the default --bundle_root


def report_breakdown(
    parser: ConfigParser, dev: torch.device, steps: int, warmup: int, limits: dict[str, float]
) -> dict[str, float]:
    """Print where a step's time goes (the config's own pieces) and achieved / limit; returns the figures."""
    breakdown: Breakdown = step_breakdown(parser, dev, steps, warmup)
    print("  breakdown of a step (the config's own pieces):", flush=True)
    for line in breakdown.lines():
        print(line, flush=True)
    achieved = breakdown.flops_per_step / breakdown.compute_seconds / 1e9
    overall = breakdown.flops_per_step / breakdown.total / 1e9
    print(
        f"    achieved: {achieved:.1f} GFLOP/s in network, loss and optimiser ({overall:.1f} over the whole step); "
        f"achieved / limit: {achieved / limits['conv_gflops']:.2f} of the conv, "
        f"{achieved / limits['matmul_gflops']:.2f} of the matmul",
        flush=True,
    )
    figures = {f"{name}_ms": 1000 * value for name, value in breakdown.seconds.items()}
    figures |= {
        "step_ms": 1000 * breakdown.total,
        "gflops_per_pair": breakdown.flops_per_step / breakdown.batch_size / 1e9,
        "achieved_gflops": achieved,
        "share_sum": sum(breakdown.shares().values()),
    }
    return figures


def compare_settings(
    settings: dict[str, dict[str, Any]],
    overrides: dict[str, Any],
    dev: torch.device,
    steps: int,
    warmup: int,
    repeats: int,
    breakdown: bool,
) -> dict[str, Any]:
    """Pairs/s of the config's trainer for each named setting, repetitions interleaved (A, B, A, B, ...), then one
    breakdown of each; prints the table with the medians and the ratios to the first setting."""
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for repeat in range(repeats):
        for name, setting in settings.items():
            print(f"[{repeat + 1}/{repeats}] {name}: " + json.dumps(setting), flush=True)
            torch.manual_seed(0)
            with temporary_run(overrides | setting) as engine:
                rates[name].append(measure_engine(engine, dev, steps, warmup))
    details: dict[str, dict[str, float]] = {}
    if breakdown:
        limits = machine_limit(build(overrides | next(iter(settings.values()))), dev)
        for name, setting in settings.items():
            print(f"{name}:", flush=True)
            with temporary_run(overrides | setting) as parser:
                details[name] = report_breakdown(parser, dev, steps, warmup, limits)
    reference = statistics.median(rates[next(iter(settings))])
    extra = " GFLOP per pair | validation, ms per step |" if details else ""
    print(f"| setting | the config's trainer, pairs/s (each repetition) | median | x the first |{extra}", flush=True)
    print("|---|---|---|---|" + ("---|---|" if details else ""), flush=True)
    results: dict[str, Any] = {}
    for name, values in rates.items():
        median = statistics.median(values)
        results[name] = {"trainer_pairs_per_s": values, "median": median, "ratio": median / reference}
        results[name] |= details.get(name, {})
        listed = ", ".join(f"{v:.1f}" for v in values)
        more = f" {details[name]['gflops_per_pair']:.2f} | {details[name]['validation_ms']:.0f} |" if details else ""
        print(f"| {name} | {listed} | {median:.1f} | {median / reference:.2f}x |{more}", flush=True)
    return results


def main(
    device: str | None = None,
    image_size: int | None = None,
    batch_size: int = 8,
    steps: int = 10,
    warmup: int = 2,
    profile: str = "compact",
    features: list[int] | None = None,
    num_workers: int | None = None,
    paths: str | Sequence[str] = ("plain", "fast"),
    amp: bool | None = None,
    channels_last: bool | None = None,
    compile: bool = False,
    dataset_dir: str | None = None,
    bundle_root: str = BUNDLE_ROOT,
    quick: bool = False,
    breakdown: bool = True,
    compare: str | Sequence[str] | dict[str, Any] | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Measure and print pretraining throughput of the plain and the fast path; returns the figures.

    Args:
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        image_size, batch_size: view size (square; default: the profile's) and view pairs per step.
        steps, warmup: timed and untimed (>= 1: compilation, allocator) iterations of each measurement.
        profile: network sizes of ``configs/pretrain.yaml`` (``compact`` or ``paper``); ``features`` overrides.
        num_workers: loader workers (default: the config's).
        paths: ``plain`` (per-sample MONAI transforms in loader workers, fp32) and/or ``fast``.
        amp, channels_last, compile: the fast path's switches (defaults: see
            :func:`pix2rep_bundle.benchmarking.fast_path`).
        quick: a tiny setting for a smoke test (48 x 48, batch 2, tiny U-Net, 2 steps).
        breakdown: time each of the config's pieces per step and the machine's fp32 limit (see the module docstring).
        compare: settings measured side by side instead of the paths: preset names of :data:`~pix2rep_bundle.benchmarking.PRESETS`
            (``recipe,view64,fast``) or a dict of named config overrides; the first is the reference.
        repeats: interleaved repetitions of each ``compare`` setting.
    """
    if quick:
        image_size, batch_size, steps, warmup = 48, 2, 2, 1
        features = features or [4, 4, 8, 8, 16, 8]
    check_counts(image_size=image_size, batch_size=batch_size, steps=steps, warmup=warmup, repeats=repeats)
    settings = None if compare is None else parse_compare(compare)
    breakdown = as_bool(breakdown, "breakdown")  # the command line's "false" is a string
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
        raise ValueError(f"--num_workers must be a whole number >= 0, got {num_workers!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if image_size is None:
        image_size = int(build({"profile": profile}).get_parsed_content("image_size")[0])
    paths = [p.strip() for p in (paths.split(",") if isinstance(paths, str) else paths)]
    unknown = sorted(set(paths) - {"plain", "fast"})
    if unknown:
        raise ValueError(f"unknown path(s) {unknown}: choose among plain, fast")
    overrides: dict[str, Any] = {
        "bundle_root": bundle_root,
        "profile": profile,
        "device": f"$torch.device('{dev}')",
        "image_size": [image_size, image_size],
        "batch_size": batch_size,
        "prepared_dir": os.path.join(bundle_root, "cache", "prepared", f"benchmark_{image_size}"),
    }
    if quick:
        overrides |= {"phantom_subjects": 10, "projection_hidden": 8, "projection_dim": 8}
    if features is not None:
        overrides["features"] = list(features)
    if num_workers is not None:
        overrides["num_workers"] = int(num_workers)
    if dataset_dir is not None:
        overrides["dataset_dir"] = dataset_dir
    switches = {"plain": PLAIN, "fast": fast_path(dev, amp, channels_last, compile)}
    first = build(overrides)
    print(
        f"benchmark: {dev}, {profile} U-Net features {first.get_parsed_content('features')}, "
        f"{image_size} x {image_size}, batch {batch_size} pairs, {first.get_parsed_content('num_workers')} loader "
        f"workers, torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
        flush=True,
    )
    if settings is not None:
        return compare_settings(settings, overrides, dev, steps, warmup, repeats, breakdown)
    limits = machine_limit(first, dev) if breakdown else {}
    results: dict[str, Any] = {}
    flops = None
    for path in paths:
        print(f"{path} path: " + ", ".join(f"{k} {v}" for k, v in switches[path].items()), flush=True)
        torch.manual_seed(0)
        print("  hand-written loop over the config's pieces:", flush=True)
        results[path] = measure(build(overrides | switches[path]), dev, steps, warmup, flops)
        flops = results[path]["gflops_per_step"] * 1e9
        torch.manual_seed(0)
        with temporary_run(overrides | switches[path]) as engine:
            results[path]["trainer_pairs_per_s"] = measure_engine(engine, dev, steps, warmup)
        if breakdown:
            torch.manual_seed(0)
            with temporary_run(overrides | switches[path]) as parser:
                results[path]["breakdown"] = report_breakdown(parser, dev, steps, warmup, limits)
    if limits:
        results["machine_limit"] = limits
    if {"plain", "fast"} <= set(results):
        for key, what in (
            ("end_to_end_pairs_per_s", "hand-written loop, end to end"),
            ("trainer_pairs_per_s", "the config's trainer"),
        ):
            ratio = results["fast"][key] / results["plain"][key]
            results["fast_over_plain" if key == "trainer_pairs_per_s" else "fast_over_plain_loop"] = ratio
            print(f"fast / plain, {what}: {ratio:.2f}x", flush=True)
    return results


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda figures: None)  # the figures are printed as they are measured
