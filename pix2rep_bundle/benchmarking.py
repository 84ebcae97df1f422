"""What ``scripts/benchmark.py`` measures of pretraining speed: the paths and presets it compares, the config parsed
for a measurement, the hand-written loop over the config's pieces (:func:`measure`), the config's own trainer
(:func:`measure_engine`) and the machine's fp32 limit (:func:`machine_limit`); each prints its figures as it goes.
Where a step's time goes is :mod:`pix2rep_bundle.profiling`'s."""

from __future__ import annotations

import contextlib
import resource
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from pix2rep_bundle.bundle_configs import config_parser
from pix2rep_bundle.engines import bf16_is_fast
from pix2rep_bundle.profiling import conv_gflops, first_block_conv, matmul_gflops
from pix2rep_bundle.settings import as_bool


def build(overrides: Mapping[str, Any]) -> ConfigParser:
    """``configs/pretrain.yaml`` parsed with ``overrides``."""
    return config_parser("pretrain.yaml", overrides)


@contextlib.contextmanager
def temporary_run(overrides: Mapping[str, Any]) -> Iterator[ConfigParser]:
    """:func:`build` with a temporary ``output_dir`` (removed at the end), its TensorBoard writer closed after use."""
    with tempfile.TemporaryDirectory(prefix="pix2rep_benchmark_") as output_dir:
        parser = build(dict(overrides) | {"output_dir": output_dir})
        yield parser
        parser.get_parsed_content("tensorboard_writer").close()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (GPU), so that a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> tuple[str, float]:
    """A line and the figure in GiB: GPU ``max_memory_allocated`` since the path started, or the CPU peak RSS of
    this process so far (it cannot be reset: with two paths, the second's is the larger of both)."""
    if device.type == "cuda":
        gib = torch.cuda.max_memory_allocated(device) / 2**30
        return f"{gib:.2f} GiB GPU (max_memory_allocated)", gib
    gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return f"{gib:.2f} GiB CPU (peak RSS of this process so far)", gib


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
# the 0.9.0 recipe's pretraining (128 x 128 views) in fp32, and the speed settings measured against it; view64 is the
# step of the shipped recipe since 0.11.0 (scripts/reproduce_acdc.py RECIPE)
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
        sync(dev)
        start = time.perf_counter()
        for _ in range(count):
            action()
        sync(dev)
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
    memory, figures["peak_memory_gib"] = peak_memory(dev)
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
        sync(dev)
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
