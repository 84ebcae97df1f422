"""Pretraining speed, one line per figure: data pipeline alone, training step alone, end to end, peak memory and
achieved TFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on one step).

Everything is built by ``configs/pretrain.yaml`` itself (the real dataset, paired views, network, loss and
optimiser), on the embedded phantom unless ``--dataset_dir`` is given:

    python scripts/benchmark.py                                  # CPU, 128 x 128, batch 8
    python scripts/benchmark.py --image_size 192 --batch_size 64 --profile paper --amp true   # a GPU
    python scripts/benchmark.py --quick                          # a few tiny steps (the CI smoke test)

This measures the straightforward path (per-sample MONAI transforms in loader workers, fp32 unless ``--amp``).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

BUNDLE = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU (max_memory_allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB CPU (peak RSS of this process)"


def build(overrides: dict[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "pretrain.yaml"))
    parser.update(overrides)
    return parser


def main(device: str | None = None, image_size: int = 128, batch_size: int = 8, steps: int = 10, warmup: int = 2,
         profile: str = "cpu_demo", features: list[int] | None = None, num_workers: int | None = None,
         amp: bool = False, channels_last: bool = False, dataset_dir: str | None = None, bundle_root: str = str(BUNDLE),
         quick: bool = False) -> dict[str, float]:
    """Measure and print pretraining throughput; returns the figures.

    Args:
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        image_size, batch_size: view size (square) and view pairs per step.
        steps, warmup: timed and untimed iterations of each measurement.
        profile: network sizes of ``configs/common.yaml`` (``cpu_demo`` or ``paper``); ``features`` overrides.
        num_workers: loader workers (default: the config's).
        amp: bf16 autocast (a GPU).
        channels_last: network and images in channels-last memory format.
        quick: a tiny setting for a smoke test (48 x 48, batch 2, tiny U-Net, 2 steps).
    """
    if quick:
        image_size, batch_size, steps, warmup = 48, 2, 2, 1
        features = features or [4, 4, 8, 8, 16, 8]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides: dict[str, Any] = {
        "bundle_root": bundle_root, "profile": profile, "device": f"$torch.device('{dev}')",
        "image_size": [image_size, image_size], "batch_size": batch_size, "amp": bool(amp),
        "channels_last": bool(channels_last),
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
    parser = build(overrides)
    loader = parser.get_parsed_content("train#dataloader")
    network = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    loss_function = parser.get_parsed_content("loss_function")
    prepare_batch = parser.get_parsed_content("prepare_batch")
    needed = warmup + steps
    if len(loader) < needed:
        raise ValueError(f"the dataset gives {len(loader)} batches per epoch; fewer --steps/--warmup or a smaller "
                         f"--batch_size are needed (asked {needed})")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(amp))

    def step(batch) -> None:
        inputs, alignment = prepare_batch(batch, device=dev)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_function(network(inputs), alignment)
        loss.backward()
        optimizer.step()

    figures: dict[str, float] = {}
    print(f"benchmark: {dev}, {profile} U-Net features {parser.get_parsed_content('features')}, "
          f"{image_size} x {image_size}, batch {batch_size} pairs, {loader.num_workers} loader workers, "
          f"amp {bool(amp)}, channels_last {bool(channels_last)}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)

    batches = iter(loader)  # 1. the data pipeline alone
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    figures["data_pairs_per_s"] = steps * batch_size / (time.perf_counter() - start)
    print(f"data pipeline alone: {figures['data_pairs_per_s']:.1f} pairs/s", flush=True)

    fixed = next(iter(loader))  # 2. the training step alone, on one batch
    network.train()
    for _ in range(warmup):
        step(fixed)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step(fixed)
    _sync(dev)
    step_seconds = (time.perf_counter() - start) / steps
    figures["step_pairs_per_s"] = batch_size / step_seconds
    print(f"training step alone: {figures['step_pairs_per_s']:.1f} pairs/s ({step_seconds * 1000:.0f} ms per step)",
          flush=True)

    batches = iter(loader)  # 3. end to end
    for _ in range(warmup):
        step(next(batches))
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    _sync(dev)
    figures["end_to_end_pairs_per_s"] = steps * batch_size / (time.perf_counter() - start)
    print(f"end to end: {figures['end_to_end_pairs_per_s']:.1f} pairs/s", flush=True)

    counter = FlopCounterMode(display=False)  # 4. counted FLOPs of one step
    with counter:
        step(fixed)
    flops = counter.get_total_flops()
    figures["tflops_per_s"] = flops / step_seconds / 1e12
    figures["gflops_per_step"] = flops / 1e9
    print(f"FLOPs: {flops / 1e9:.1f} GFLOP per step, achieved {figures['tflops_per_s']:.3f} TFLOP/s", flush=True)
    print(f"peak memory: {_peak_memory(dev)}", flush=True)
    ratio = figures["data_pairs_per_s"] / figures["step_pairs_per_s"]
    print(f"data pipeline / training step: {ratio:.2f}x", flush=True)
    return figures


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda figures: None)  # the figures are printed as they are measured
