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
every setting shares the machine's noise: ``--compare recipe,fast`` (the presets of :data:`PRESETS`) or a dict
``--compare '{"name": {overrides}, ...}'``; the first is the reference of the ratios:

    python scripts/benchmark.py --compare recipe,view64,fast --repeats 3
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from pix2rep_bundle.engines import bf16_is_fast
from pix2rep_bundle.profiling import Breakdown, conv_gflops, first_block_conv, matmul_gflops, step_breakdown
from pix2rep_bundle.settings import as_bool

BUNDLE = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = str(BUNDLE)  # the default --bundle_root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> tuple[str, float]:
    """A line and the figure in GiB: GPU ``max_memory_allocated`` since the path started, or the CPU peak RSS of
    this process so far (it cannot be reset: with two paths, the second's is the larger of both)."""
    if device.type == "cuda":
        gib = torch.cuda.max_memory_allocated(device) / 2**30
        return f"{gib:.2f} GiB GPU (max_memory_allocated)", gib
    gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return f"{gib:.2f} GiB CPU (peak RSS of this process so far)", gib


def build(overrides: dict[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "pretrain.yaml"))
    parser.update(overrides)
    return parser


def fast_path(device: torch.device, amp: bool | None, channels_last: bool | None, compile: bool) -> dict[str, bool]:
    """The fast path's switches: augmentation on the device always; bf16 autocast where the device computes bf16
    natively (:func:`~pix2rep_bundle.engines.bf16_is_fast`) unless ``amp`` says otherwise; channels-last on GPUs;
    compile when asked."""
    amp = bf16_is_fast(device) if amp is None else amp
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    return {
        "augment_on_device": True,
        "amp": as_bool(amp, "amp"),
        "channels_last": as_bool(channels_last, "channels_last"),
        "compile": as_bool(compile, "compile"),
    }


PLAIN = {"augment_on_device": False, "amp": False, "channels_last": False, "compile": False}
# the 0.9.0 recipe's pretraining (scripts/reproduce_acdc.py RECIPE) in fp32, and the speed settings measured against it
RECIPE_VIEWS = {"zoom_offset": False, "translate_fraction": 0.15}
RECIPE = {
    "augment_on_device": True,
    "amp": False,
    "channels_last": False,
    "compile": False,
    "view_settings": RECIPE_VIEWS,
}
PRESETS: dict[str, dict[str, Any]] = {
    "recipe": RECIPE,
    "view64": RECIPE | {"view_settings": RECIPE_VIEWS | {"view_size": [64, 64]}},
    "fast": RECIPE
    | {"view_settings": RECIPE_VIEWS | {"view_size": [64, 64]}, "losses#infonce#num_samples": 500, "num_workers": 0},
}


def measure(parser: ConfigParser, dev: torch.device, steps: int, warmup: int, flops: float | None) -> dict[str, float]:
    """Data pipeline alone, training step alone (one fixed batch), end to end, achieved TFLOP/s, peak memory."""
    loader = parser.get_parsed_content("train#dataloader")
    network = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    loss_function = parser.get_parsed_content("loss_function")
    prepare_batch = parser.get_parsed_content("train#trainer#prepare_batch")
    batch_size = int(parser.get_parsed_content("batch_size"))
    needed = warmup + steps
    if len(loader) < needed:
        raise ValueError(
            f"the dataset gives {len(loader)} batches per epoch; fewer --steps/--warmup or a smaller "
            f"--batch_size are needed (asked {needed})"
        )
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=as_bool(parser.get_parsed_content("amp")))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step(batch) -> None:
        inputs, alignment = prepare_batch(batch, device=dev)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_function(network(inputs), alignment)
        loss.backward()
        optimizer.step()

    def timed(action, count: int) -> float:
        for _ in range(warmup):
            action()
        _sync(dev)
        start = time.perf_counter()
        for _ in range(count):
            action()
        _sync(dev)
        return time.perf_counter() - start

    figures: dict[str, float] = {}
    batches = iter(loader)  # 1. the data pipeline alone: loading, augmentation, alignment, on the device
    seconds = timed(lambda: prepare_batch(next(batches), device=dev), steps)
    figures["data_pairs_per_s"] = steps * batch_size / seconds
    print(f"  data pipeline alone: {figures['data_pairs_per_s']:.1f} pairs/s", flush=True)

    fixed = next(iter(loader))  # 2. the training step alone, on one batch (warm-up includes any compilation)
    network.train()
    step_seconds = timed(lambda: step(fixed), steps) / steps
    figures["step_pairs_per_s"] = batch_size / step_seconds
    print(
        f"  training step alone: {figures['step_pairs_per_s']:.1f} pairs/s ({step_seconds * 1000:.0f} ms per step)",
        flush=True,
    )

    batches = iter(loader)  # 3. end to end
    seconds = timed(lambda: step(next(batches)), steps)
    figures["end_to_end_pairs_per_s"] = steps * batch_size / seconds
    print(f"  end to end: {figures['end_to_end_pairs_per_s']:.1f} pairs/s", flush=True)

    if flops is None:  # 4. counted FLOPs of one step (eager network)
        counter = FlopCounterMode(display=False)
        with counter:
            step(fixed)
        flops = counter.get_total_flops()
    figures["gflops_per_step"] = flops / 1e9
    figures["tflops_per_s"] = flops / step_seconds / 1e12
    print(f"  FLOPs: {flops / 1e9:.1f} GFLOP per step, achieved {figures['tflops_per_s']:.3f} TFLOP/s", flush=True)
    memory, figures["peak_memory_gib"] = _peak_memory(dev)
    print(f"  peak memory: {memory}", flush=True)
    ratio = figures["data_pairs_per_s"] / figures["step_pairs_per_s"]
    print(f"  data pipeline / training step: {ratio:.2f}x", flush=True)
    return figures


def measure_engine(parser: ConfigParser, dev: torch.device, steps: int, warmup: int) -> float:
    """The configs' own engine: ``train#trainer`` of the parsed config run for ``warmup + steps`` iterations (its
    loader, ``prepare_batch``, autocast, loss, optimiser and iteration handlers included), timed by the trainer's
    own events from the end of the warm-up to the last iteration. Its files go to a temporary ``output_dir``."""
    batch_size = int(parser.get_parsed_content("batch_size"))
    trainer = parser.get_parsed_content("train#trainer")
    if trainer.state.epoch_length < warmup + steps:
        raise ValueError(
            f"the dataset gives {trainer.state.epoch_length} batches per epoch; fewer --steps/--warmup "
            f"or a smaller --batch_size are needed (asked {warmup + steps})"
        )
    marks: dict[str, float] = {}

    def mark(engine) -> None:
        _sync(dev)
        if engine.state.iteration == warmup:
            marks["start"] = time.perf_counter()
        elif engine.state.iteration == warmup + steps:
            marks["end"] = time.perf_counter()
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, mark)
    trainer.run()
    rate = steps * batch_size / (marks["end"] - marks["start"])
    print(f"  the config's trainer (train#trainer.run(), loader and handlers included): {rate:.1f} pairs/s", flush=True)
    return rate


def machine_limit(parser: ConfigParser, dev: torch.device) -> dict[str, float]:
    """The machine's fp32 limit on these cores, now: a 2048 x 2048 matrix product and the network's first-block
    convolution forward on the stacked views (2 x batch, the view size), in GFLOP/s; printed."""
    network = parser.get_parsed_content("network")
    conv = first_block_conv(network)
    views = parser.get_parsed_content("view_settings").get("view_size") or parser.get_parsed_content("image_size")
    size = (int(views[0]), int(views[1])) if isinstance(views, (list, tuple)) else (int(views), int(views))
    batch = 2 * int(parser.get_parsed_content("batch_size"))
    limits = {"matmul_gflops": matmul_gflops(dev), "conv_gflops": conv_gflops(conv, batch, size, dev)}
    print(
        f"machine fp32 limit: 2048 x 2048 matmul {limits['matmul_gflops']:.1f} GFLOP/s; conv2d {conv.in_channels} -> "
        f"{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]} on {batch} x {size[0]} x {size[1]} "
        f"(the network's first block) {limits['conv_gflops']:.1f} GFLOP/s",
        flush=True,
    )
    return limits


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
            with tempfile.TemporaryDirectory(prefix="pix2rep_benchmark_") as output_dir:
                engine = build(overrides | setting | {"output_dir": output_dir})
                rates[name].append(measure_engine(engine, dev, steps, warmup))
                engine.get_parsed_content("tensorboard_writer").close()
    details: dict[str, dict[str, float]] = {}
    if breakdown:
        limits = machine_limit(build(overrides | next(iter(settings.values()))), dev)
        for name, setting in settings.items():
            print(f"{name}:", flush=True)
            with tempfile.TemporaryDirectory(prefix="pix2rep_benchmark_") as output_dir:
                parser = build(overrides | setting | {"output_dir": output_dir})
                details[name] = report_breakdown(parser, dev, steps, warmup, limits)
                parser.get_parsed_content("tensorboard_writer").close()
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


def parse_compare(compare: str | Sequence[str] | dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``--compare``: preset names (comma-separated or a list) or a dict of named overrides; ValueError naming an
    unknown preset."""
    if isinstance(compare, dict):
        if not compare or not all(isinstance(v, dict) for v in compare.values()):
            raise ValueError(f"--compare: a dict must map names to dicts of config overrides, got {compare!r}")
        return {str(k): dict(v) for k, v in compare.items()}
    names = [n.strip() for n in (compare.split(",") if isinstance(compare, str) else compare)]
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        raise ValueError(f"--compare: unknown setting(s) {unknown}: choose among {sorted(PRESETS)} or give a dict")
    return {n: PRESETS[n] for n in names}


def check_counts(**counts: Any) -> None:
    """ValueError naming every count (None: a default) that is not a whole number >= 1."""
    problems = [
        f"--{name} must be a whole number >= 1, got {value!r}"
        for name, value in counts.items()
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1)
    ]
    if problems:
        raise ValueError("; ".join(problems))


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
        amp, channels_last, compile: the fast path's switches (defaults: see :func:`fast_path`).
        quick: a tiny setting for a smoke test (48 x 48, batch 2, tiny U-Net, 2 steps).
        breakdown: time each of the config's pieces per step and the machine's fp32 limit (see the module docstring).
        compare: settings measured side by side instead of the paths: preset names of :data:`PRESETS`
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
        with tempfile.TemporaryDirectory(prefix="pix2rep_benchmark_") as output_dir:
            engine = build(overrides | switches[path] | {"output_dir": output_dir})
            results[path]["trainer_pairs_per_s"] = measure_engine(engine, dev, steps, warmup)
            engine.get_parsed_content("tensorboard_writer").close()
        if breakdown:
            torch.manual_seed(0)
            with tempfile.TemporaryDirectory(prefix="pix2rep_benchmark_") as output_dir:
                parser = build(overrides | switches[path] | {"output_dir": output_dir})
                results[path]["breakdown"] = report_breakdown(parser, dev, steps, warmup, limits)
                parser.get_parsed_content("tensorboard_writer").close()
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
