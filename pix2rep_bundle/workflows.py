"""Pretraining workflow pieces that plug Pix2Rep into MONAI's ``SupervisedTrainer``/``SupervisedEvaluator``.

The trainer is MONAI's own. Pix2Rep enters through three small callables:

- :class:`PrepareViewPairs` (``prepare_batch``) stacks the two views into one batch for a single forward
  pass and turns their recorded affines into the :class:`~pix2rep_bundle.geometry.Alignment` that plays the
  role of the "label";
- :class:`StackedViewsLoss` (``loss_function``) splits the projected feature maps back into the two views
  and applies a dense Pix2Rep loss;
- handlers: atomic checkpoints for resuming, the backbone saver, and a throughput logger.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.handlers import CheckpointLoader
from torch import nn

from pix2rep_bundle.geometry import Alignment, alignment_from_batch
from pix2rep_bundle.io import torch_save_atomic
from pix2rep_bundle.networks import save_backbone
from pix2rep_bundle.run_state import as_bool

logger = logging.getLogger(__name__)


class PrepareViewPairs:
    """``prepare_batch`` for pretraining: ``(cat(view_1, view_2), Alignment)`` on ``device``.

    Args:
        view_keys: batch keys of the two views.
        channels_last: put the stacked images in ``channels_last`` memory format.
    """

    def __init__(self, view_keys: tuple[str, str] = ("view_1", "view_2"), channels_last: bool = False):
        self.view_keys = tuple(view_keys)
        self.channels_last = channels_last

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Alignment]:
        alignment = alignment_from_batch(batchdata, view_keys=self.view_keys, device=device)
        views = [torch.as_tensor(batchdata[k]) for k in self.view_keys]
        inputs = torch.cat([v.as_tensor() if hasattr(v, "as_tensor") else v for v in views], dim=0)
        inputs = inputs.to(device=device, non_blocking=non_blocking, **kwargs)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, alignment


class StackedViewsLoss(nn.Module):
    """Apply a two-view dense loss to the network output of stacked views ``cat(view_1, view_2)``."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, pred: torch.Tensor, alignment: Alignment) -> torch.Tensor:
        features_1, features_2 = pred.chunk(2, dim=0)
        return self.loss(features_1, features_2, alignment)


def stacked_batch_size(alignment: Alignment) -> int:
    """Number of view pairs in a batch (for ``ignite.metrics.Loss``)."""
    return alignment.grid.shape[0]


class AtomicCheckpointSaver:
    """Every ``interval`` epochs and at the end of training, write the state of ``save_dict`` atomically.

    The file holds ``{name: obj.state_dict()}`` for every entry (network, optimizer, scheduler, trainer, ...),
    the layout MONAI's ``CheckpointLoader`` reads back to resume. It is written to a temporary file that is
    renamed over ``path``, so an interrupted run never leaves a corrupt checkpoint.
    """

    def __init__(self, path: str, save_dict: Mapping[str, Any], interval: int = 1):
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.path = path
        self.save_dict = dict(save_dict)
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        state = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        torch_save_atomic(state, self.path)
        logger.info(f"epoch {engine.state.epoch}: checkpoint written to {self.path}")


class BestSaver:
    """Write a network to ``path`` atomically, keeping the best value of an evaluator metric.

    With ``metric_name`` it is attached to the evaluator and saves when the metric improves: lower with
    ``mode="min"`` (e.g. a validation loss), higher with ``mode="max"`` (e.g. a validation Dice). Without,
    it saves whenever it is called (attached to the trainer's ``COMPLETED``). Its best value is part of a
    resumable checkpoint (``state_dict``). Subclasses choose what is written (:meth:`save`).
    """

    what = "network"

    def __init__(self, network: nn.Module, path: str, metric_name: str | None = None, mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.network = network
        self.path = path
        self.metric_name = metric_name
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf

    def save(self, network: nn.Module) -> None:
        raise NotImplementedError

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_COMPLETED if self.metric_name else Events.COMPLETED
        engine.add_event_handler(event, self)

    def _improved(self, value: float) -> bool:
        return value < self.best if self.mode == "min" else value > self.best

    def __call__(self, engine: Engine) -> None:
        network = self.network.module if hasattr(self.network, "module") else self.network
        if self.metric_name is None:
            self.save(network)
            logger.info(f"{self.what} written to {self.path}")
            return
        value = float(engine.state.metrics[self.metric_name])
        if not math.isfinite(value):
            logger.warning(f"{self.metric_name} is {value}: {self.what} not saved")
            return
        if self._improved(value):
            self.best = value
            self.save(network)
            logger.info(f"{self.metric_name} improved to {value:.4f}: {self.what} written to {self.path}")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])


class BackboneSaver(BestSaver):
    """Write the Pix2Rep backbone (no projection head) in the format the segmentation configs load."""

    what = "backbone"

    def save(self, network: nn.Module) -> None:
        save_backbone(network, self.path)


class ModelSaver(BestSaver):
    """Write the network's plain state dict (``models/model.pt``, what MONAI Label and evaluate load)."""

    what = "model"

    def save(self, network: nn.Module) -> None:
        torch_save_atomic(network.state_dict(), self.path)


class ThroughputLogger:
    """At the end of every epoch, log the mean training loss, view pairs per second and wall time.

    Pairs per second also go to TensorBoard when a ``summary_writer`` is given.
    """

    def __init__(self, summary_writer: Any | None = None, tag: str = "pairs_per_second"):
        self.summary_writer = summary_writer
        self.tag = tag
        self._start = 0.0
        self._pairs = 0
        self._loss_sum = 0.0
        self._iterations = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        self._start = time.perf_counter()
        self._pairs = 0
        self._loss_sum = 0.0
        self._iterations = 0

    def _iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output if isinstance(engine.state.output, Mapping) else {}
        if "image" in output:
            self._pairs += output["image"].shape[0] // 2
        if "loss" in output:
            loss = output["loss"]
            self._loss_sum += float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
            self._iterations += 1

    def _epoch_completed(self, engine: Engine) -> None:
        seconds = time.perf_counter() - self._start
        # with torch.distributed, every process sees an equal share (DistributedSampler, even_divisible)
        processes = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        pairs = self._pairs * processes
        rate = pairs / max(seconds, 1e-9)
        mean_loss = self._loss_sum / max(self._iterations, 1)
        where = f" on {processes} processes" if processes > 1 else ""
        logger.info(
            f"epoch {engine.state.epoch}/{engine.state.max_epochs}: mean train_loss {mean_loss:.4f}, "
            f"{pairs} pairs in {seconds:.1f} s{where}, {rate:.1f} pairs/s"
        )
        if self.summary_writer is not None:
            self.summary_writer.add_scalar(self.tag, rate, engine.state.epoch)


class FixedViews:
    """Draw the same random views at every run of an evaluator, so validation losses are comparable.

    At the evaluator's ``STARTED`` it re-seeds the random transforms of the dataloader's dataset (used as is
    with ``num_workers=0``) and the dataloader's ``generator`` (from which the worker seeds derive otherwise).
    """

    def __init__(self, dataloader: torch.utils.data.DataLoader, seed: int = 0):
        if dataloader.num_workers > 0 and dataloader.generator is None:
            raise ValueError("FixedViews needs a dataloader built with generator=torch.Generator() "
                             "when num_workers > 0")
        self.dataloader = dataloader
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        set_rnd(self.dataloader.dataset, seed=self.seed)
        if self.dataloader.generator is not None:
            self.dataloader.generator.manual_seed(self.seed)


class NoSummaryWriter:
    """A TensorBoard ``SummaryWriter`` stand-in that writes nothing (processes other than rank 0)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def resume_from(loader: CheckpointLoader, trainer: Engine, resume: bool) -> bool:
    """Attach ``loader`` to ``trainer`` when ``resume`` is asked for and its checkpoint exists.

    Returns whether training resumes; ``resume`` without a checkpoint starts afresh, with a log line saying so.
    """
    if not as_bool(resume, "resume"):
        return False
    if not os.path.isfile(loader.load_path):
        logger.warning(f"--resume: no checkpoint at {loader.load_path}, training starts from scratch")
        return False
    loader.attach(trainer)
    logger.info(f"--resume: training continues from {loader.load_path}")
    return True


def choose(options: Mapping[str, Any], name: str, what: str) -> Any:
    """``options[name]``, or a ValueError listing the valid names (e.g. for ``--loss``)."""
    if name not in options:
        raise ValueError(f"unknown {what} '{name}': choose one of {sorted(options)}")
    return options[name]
