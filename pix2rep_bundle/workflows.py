"""Pretraining workflow pieces that plug Pix2Rep into MONAI's ``SupervisedTrainer``/``SupervisedEvaluator``.

The trainer is MONAI's own. Pix2Rep enters through three small callables:

- :class:`PrepareViewPairs` (``prepare_batch``) stacks the two views into one batch for a single forward
  pass and turns their recorded affines into the :class:`~pix2rep_bundle.geometry.Alignment` that plays the
  role of the "label";
- :class:`StackedViewsLoss` (``loss_function``) splits the projected feature maps back into the two views
  and applies a dense Pix2Rep loss;
- handlers: a throughput logger and :class:`FixedViews` (reproducible validation); the checkpoint and network
  savers are in :mod:`pix2rep_bundle.checkpoints`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from torch import nn

from pix2rep_bundle.geometry import Alignment, PrepareStackedViews, alignment_from_batch, plain_tensor

logger = logging.getLogger(__name__)


class PrepareViewPairs(PrepareStackedViews):
    """``prepare_batch`` for pretraining: ``(cat(view_1, view_2), Alignment)`` on ``device``.

    Args:
        view_keys: batch keys of the two views.
        channels_last: put the stacked images in ``channels_last`` memory format.
    """

    def __init__(self, view_keys: tuple[str, str] = ("view_1", "view_2"), channels_last: bool = False):
        self.view_keys = tuple(view_keys)
        self.channels_last = channels_last

    def stacked_views(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None, non_blocking: bool, **kwargs: Any
    ) -> tuple[torch.Tensor, Alignment]:
        """The two views of the batch stacked, on ``device``, and their alignment from the recorded affines."""
        alignment = alignment_from_batch(batchdata, view_keys=self.view_keys, device=device)
        inputs = torch.cat([plain_tensor(batchdata[k]) for k in self.view_keys], dim=0)
        return inputs.to(device=device, non_blocking=non_blocking, **kwargs), alignment


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
    """Make every run of an evaluator draw the same random numbers, so validation losses are comparable, and leave
    the training's random draws as they were.

    At the evaluator's ``STARTED`` it re-seeds the random transforms of the dataloader's dataset (used as is with
    ``num_workers=0``) and the dataloader's ``generator`` (from which the worker seeds derive otherwise), saves the
    global torch random state (CPU and CUDA) and seeds it with ``seed`` (the InfoNCE positions of the validation loss
    are drawn from it); at ``COMPLETED`` it puts the saved state back. The same network thus gets the same
    validation loss every time, and training draws the same numbers whether or not validation ran in between.
    """

    def __init__(self, dataloader: torch.utils.data.DataLoader, seed: int = 0):
        if dataloader.num_workers > 0 and dataloader.generator is None:
            raise ValueError(
                "FixedViews needs a dataloader built with generator=torch.Generator() when num_workers > 0"
            )
        self.dataloader = dataloader
        self.seed = int(seed)
        self._saved: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.COMPLETED, self.restore)

    def __call__(self, engine: Engine | None = None) -> None:
        set_rnd(self.dataloader.dataset, seed=self.seed)
        if self.dataloader.generator is not None:
            self.dataloader.generator.manual_seed(self.seed)
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        self._saved = (torch.get_rng_state(), cuda)
        torch.manual_seed(self.seed)

    def restore(self, engine: Engine | None = None) -> None:
        """Put back the global torch random state saved when the evaluator started."""
        if self._saved is None:
            return
        cpu, cuda = self._saved
        torch.set_rng_state(cpu)
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
        self._saved = None


class NoSummaryWriter:
    """A TensorBoard ``SummaryWriter`` stand-in that writes nothing (processes other than rank 0)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
