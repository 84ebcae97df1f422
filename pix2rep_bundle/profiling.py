"""Where pretraining time goes, against what the machine can do.

:func:`step_breakdown` times the parsed pretraining config's own pieces, one training step at a time, in the order
the trainer runs them: the loader (``train#dataloader``), the views and their alignment (the trainer's
``prepare_batch``), the network's forward pass (``network``, under the trainer's autocast), the loss
(``loss_function``: pixel sampling and similarity) forward and backward, the network's backward pass, the optimiser
step (``optimizer``), and validation (one run of ``validate#evaluator``, spread over the ``val_interval`` epochs of
training steps it serves). The loss and the network are back-propagated separately (the loss to a detached copy of
the network's output, then the network from that gradient): the gradients are those of one joint backward pass.

:func:`matmul_gflops` and :func:`conv_gflops` measure the machine's fp32 limit on the same cores in the same run: a
large matrix product, and a convolution of the network's own first block (:func:`first_block_conv`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pix2rep_bundle.engines import as_float32, autocast_context

STAGES = (
    ("loader", "loader (train#dataloader)"),
    ("views", "view generation and alignment (prepare_batch)"),
    ("forward", "network forward"),
    ("loss_forward", "loss forward (pixel sampling, similarity)"),
    ("loss_backward", "loss backward"),
    ("backward", "network backward"),
    ("optimizer", "optimizer step"),
    ("validation", "validation (validate#evaluator, per training step)"),
)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Breakdown:
    """Seconds per training step of each stage (keys of :data:`STAGES`) and the FLOPs of one step."""

    seconds: dict[str, float] = field(default_factory=dict)
    flops_per_step: float = 0.0
    batch_size: int = 1

    @property
    def total(self) -> float:
        """Seconds per step, all stages."""
        return sum(self.seconds.values())

    def shares(self) -> dict[str, float]:
        """Each stage's share of the step, in percent (they add to 100)."""
        total = self.total or 1.0
        return {name: 100.0 * value / total for name, value in self.seconds.items()}

    @property
    def compute_seconds(self) -> float:
        """Seconds per step of the FLOP-counted work: network and loss, forward and backward, and the optimiser."""
        keys = ("forward", "loss_forward", "loss_backward", "backward", "optimizer")
        return sum(self.seconds.get(k, 0.0) for k in keys)

    def lines(self) -> list[str]:
        """One printed line per stage (ms per step and share), then the total and the FLOPs."""
        shares = self.shares()
        out = [
            f"    {label}: {1000 * self.seconds[name]:.1f} ms per step, {shares[name]:.1f} %" for name, label in STAGES
        ]
        out.append(
            f"    total: {1000 * self.total:.1f} ms per step ({self.batch_size / self.total:.1f} pairs/s), 100 %"
        )
        out.append(f"    FLOPs: {self.flops_per_step / self.batch_size / 1e9:.2f} GFLOP per pair")
        return out


def _timed(device: torch.device, action: Callable[[], Any]) -> tuple[Any, float]:
    """``action()`` and its wall time in seconds (the device's queue drained before and after)."""
    synchronize(device)
    start = time.perf_counter()
    result = action()
    synchronize(device)
    return result, time.perf_counter() - start


def train_step(
    pieces: Mapping[str, Any], batch: Any, device: torch.device, seconds: dict[str, float] | None = None
) -> torch.Tensor:
    """One training step of the config's ``pieces`` (``prepare_batch``, ``network``, ``loss_function``,
    ``optimizer``, ``amp``, ``amp_kwargs``) on a loaded ``batch``; adds each stage's seconds to ``seconds``."""
    seconds = {} if seconds is None else seconds

    def add(name: str, action: Callable[[], Any]) -> Any:
        result, spent = _timed(device, action)
        seconds[name] = seconds.get(name, 0.0) + spent
        return result

    network, optimizer = pieces["network"], pieces["optimizer"]
    inputs, alignment = add("views", lambda: pieces["prepare_batch"](batch, device))
    network.train()
    optimizer.zero_grad(set_to_none=True)

    def forward() -> torch.Tensor:
        with autocast_context(pieces["amp"], device, pieces["amp_kwargs"]):
            return as_float32(network(inputs))

    pred = add("forward", forward)
    detached = pred.detach().requires_grad_(True)
    loss = add("loss_forward", lambda: pieces["loss_function"](detached, alignment).mean())
    add("loss_backward", loss.backward)
    add("backward", lambda: pred.backward(detached.grad))
    add("optimizer", optimizer.step)
    return loss.detach()


def config_pieces(parser: Any) -> dict[str, Any]:
    """The parsed pretraining config's own training pieces, as its ``train#trainer`` uses them."""
    return {
        "prepare_batch": parser.get_parsed_content("train#trainer#prepare_batch"),
        "network": parser.get_parsed_content("network"),
        "loss_function": parser.get_parsed_content("loss_function"),
        "optimizer": parser.get_parsed_content("optimizer"),
        "amp": bool(parser.get_parsed_content("train#trainer#amp")),
        "amp_kwargs": parser.get_parsed_content("train#trainer#amp_kwargs"),
    }


def count_flops(pieces: Mapping[str, Any], batch: Any, device: torch.device) -> float:
    """FLOPs of one training step (``torch.utils.flop_counter``: matrix products and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(pieces, batch, device)
    return float(counter.get_total_flops())


def step_breakdown(parser: Any, device: torch.device, steps: int, warmup: int) -> Breakdown:
    """Seconds per step of each stage of the parsed pretraining config's training (see the module docstring).

    ``warmup`` untimed steps first (allocator, one-off work), then ``steps`` timed ones on fresh loader batches;
    validation is one untimed and one timed run of ``validate#evaluator``, divided by the training steps of
    ``val_interval`` epochs. ValueError when an epoch gives fewer than ``warmup + steps`` batches."""
    pieces = config_pieces(parser)
    loader = parser.get_parsed_content("train#dataloader")
    if len(loader) < warmup + steps:
        raise ValueError(
            f"the dataset gives {len(loader)} batches per epoch; fewer --steps/--warmup or a smaller "
            f"--batch_size are needed (asked {warmup + steps})"
        )
    batches: Iterator = iter(loader)
    for _ in range(warmup):
        train_step(pieces, next(batches), device)
    seconds: dict[str, float] = {}
    for _ in range(steps):
        batch, spent = _timed(device, lambda: next(batches))
        seconds["loader"] = seconds.get("loader", 0.0) + spent
        train_step(pieces, batch, device, seconds)
    per_step = {name: seconds.get(name, 0.0) / steps for name, _ in STAGES}
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    _, validation = _timed(device, evaluator.run)
    interval = int(parser.get_parsed_content("val_interval"))
    per_step["validation"] = validation / (interval * len(loader))
    flops = count_flops(pieces, next(iter(loader)), device)
    return Breakdown(seconds=per_step, flops_per_step=flops, batch_size=int(loader.batch_size))


# ---------------------------------------------------------------------------------------- the machine's limit


def _best_seconds(device: torch.device, action: Callable[[], Any], repeats: int) -> float:
    """The shortest of ``repeats`` timed runs of ``action`` after one untimed run (other processes only slow)."""
    action()
    return min(_timed(device, action)[1] for _ in range(repeats))


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of a ``size x size`` fp32 matrix product (``2 size^3`` FLOPs), best of ``repeats``."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2.0 * size**3 / _best_seconds(device, lambda: a @ b, repeats) / 1e9


def first_block_conv(network: nn.Module) -> nn.Conv2d:
    """The network's first 2D convolution that keeps its channel count (the second convolution of a U-Net's first
    block, e.g. 16 -> 16 3x3), else its first 2D convolution."""
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the network has no Conv2d to measure")
    return next((c for c in convs if c.in_channels == c.out_channels), convs[0])


def conv_gflops(conv: nn.Conv2d, batch: int, size: tuple[int, int], device: torch.device, repeats: int = 5) -> float:
    """Achieved GFLOP/s of ``conv``'s sizes (channels, kernel, stride, padding) forward on a ``(batch, C, h, w)``
    fp32 input, counted as ``2 * out elements * C_in * k_h * k_w / groups``, best of ``repeats``."""
    weight = torch.randn_like(conv.weight, device=device, dtype=torch.float32)
    inputs = torch.randn(batch, conv.in_channels, *size, device=device)

    def run() -> torch.Tensor:
        return F.conv2d(inputs, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    out_elements = run().numel()
    flops = 2.0 * out_elements * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] / conv.groups
    return flops / _best_seconds(device, run, repeats) / 1e9
