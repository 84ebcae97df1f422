"""Files a training run keeps: resumable checkpoints written atomically, the best (or last) network, and resuming.

- :class:`AtomicCheckpointSaver`: the whole training state every ``interval`` epochs, for ``--resume true``;
- :class:`BestSaver`, :class:`BackboneSaver` (the Pix2Rep backbone, ``pix2rep_backbone.pt``) and
  :class:`ModelSaver` (the segmentation network, ``model.pt``): the network with the best validation metric;
- :func:`check_training_checkpoint`: read and check the resumable checkpoint before a resumed run writes anything;
- :func:`resume_from`: attach MONAI's ``CheckpointLoader`` when a run resumes.

No saver writes a tensor that is nan or inf (a diverged run): it raises a CheckpointError naming the file and the
tensor instead, and the run stops with the file as it was.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from torch import nn

from pix2rep_bundle.errors import CheckpointError
from pix2rep_bundle.io import torch_save_atomic
from pix2rep_bundle.networks import checkpoint_kind, require_finite, save_backbone
from pix2rep_bundle.settings import as_bool

# train.yaml's resumable state, relative to its output_dir (its checkpoint_path)
TRAINING_CHECKPOINT = os.path.join("train_state", "checkpoint.pt")

logger = logging.getLogger(__name__)


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
        require_finite(state, self.path, writing=True)
        torch_save_atomic(state, self.path)
        logger.info(f"epoch {engine.state.epoch}: checkpoint written to {self.path}")


class BestSaver:
    """Write a network to ``path`` atomically, keeping the best value of an evaluator metric.

    With ``metric_name`` it is attached to the evaluator and saves when the metric improves: lower with
    ``mode="min"`` (e.g. a validation loss), higher with ``mode="max"`` (e.g. a validation Dice). Without,
    it saves whenever it is called (attached to the trainer's ``COMPLETED``). :meth:`is_better` is the one place that
    says which way is better: pass it as the evaluator's ``metric_cmp_fn`` so that MONAI's key-metric log agrees with
    what is saved. Its best value and epoch are part of
    a resumable checkpoint (``state_dict``), and at every evaluator run they become the evaluator's ``best_metric``
    and ``best_metric_epoch``, so that a resumed run logs the best of the whole run, not of its part since the
    restart. Subclasses choose what is written (:meth:`save`).
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
        self.best_epoch = -1

    def save(self, network: nn.Module) -> None:
        raise NotImplementedError

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_COMPLETED if self.metric_name else Events.COMPLETED
        engine.add_event_handler(event, self)
        if self.metric_name:
            engine.add_event_handler(Events.STARTED, self.share_best)

    def share_best(self, engine: Engine) -> None:
        """Give the evaluator this saver's best value and epoch (read by MONAI's key-metric log and comparison)."""
        if self.best_epoch >= 0:
            engine.state.best_metric = self.best
            engine.state.best_metric_epoch = self.best_epoch

    def is_better(self, current: float, best: float) -> bool:
        """Whether ``current`` improves on ``best`` (the signature of MONAI's ``metric_cmp_fn``)."""
        return current < best if self.mode == "min" else current > best

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
        if self.is_better(value, self.best):
            self.best, self.best_epoch = value, engine.state.epoch
            self.save(network)
            logger.info(f"{self.metric_name} improved to {value:.4f}: {self.what} written to {self.path}")

    def state_dict(self) -> dict:
        return {"best": self.best, "epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state.get("epoch", -1))  # older checkpoints hold the value only


class BackboneSaver(BestSaver):
    """Write the Pix2Rep backbone (no projection head) in the format the segmentation configs load."""

    what = "backbone"

    def save(self, network: nn.Module) -> None:
        save_backbone(network, self.path)


class BackboneSnapshots:
    """Every ``interval`` epochs, keep a copy of the backbone as ``<folder>/pix2rep_backbone_epochNNN.pt`` (0: none).

    The snapshots let the features be read out along one run (``scripts/readout_curve.py``), so the return of a
    longer schedule is measured instead of guessed."""

    def __init__(self, network: nn.Module, folder: str | os.PathLike, interval: int = 0):
        self.network = network
        self.folder = str(folder)
        self.interval = int(interval)

    def path(self, epoch: int) -> str:
        return os.path.join(self.folder, f"pix2rep_backbone_epoch{epoch:03d}.pt")

    def attach(self, engine: Engine) -> None:
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        network = self.network.module if hasattr(self.network, "module") else self.network
        os.makedirs(self.folder, exist_ok=True)
        save_backbone(network, self.path(engine.state.epoch))
        logger.info(f"backbone snapshot written to {self.path(engine.state.epoch)}")


class ModelSaver(BestSaver):
    """Write the network's plain state dict (``models/model.pt``, what MONAI Label and evaluate load)."""

    what = "model"

    def save(self, network: nn.Module) -> None:
        state = network.state_dict()
        require_finite(state, self.path, writing=True)
        torch_save_atomic(state, self.path)


TRAINING_STATE_KEYS = ("network", "optimizer", "trainer")  # in every resumable checkpoint of the bundle
_READ: dict[tuple[str, int, int], Any] = {}  # checkpoints read and found finite: their keys (or what they hold)


def check_training_checkpoint(path: str | os.PathLike, resume: Any, expected: Any = TRAINING_STATE_KEYS) -> bool:
    """With ``resume``, read the resumable checkpoint at ``path`` (when there is one) and check that it can resume
    a run: a readable PyTorch file, a training state with the ``expected`` entries, finite values. The configs call
    it before :func:`pix2rep_bundle.run_guard.start_run`, so a bad file stops the run before anything is written.

    Returns whether there is a checkpoint to resume from. Raises CheckpointError naming the file: empty, truncated or
    unreadable, not a training checkpoint (what it holds), or a nan/inf tensor.
    """
    if not as_bool(resume, "resume") or not os.path.isfile(path):
        return False
    stamp = (os.path.abspath(path), os.stat(path).st_mtime_ns, os.path.getsize(path))
    if stamp not in _READ:  # read once per process (the config checks it first, resume_from again)
        _READ[stamp] = _read_training_checkpoint(path)
    keys = _READ[stamp]
    missing = [k for k in expected if k not in keys] if isinstance(keys, list) else list(expected)
    if missing:
        held = f"keys {keys}" if isinstance(keys, list) and keys else keys
        raise CheckpointError(
            path,
            f"not a training checkpoint: {held} (a resumable checkpoint of this config holds {', '.join(expected)})",
        )
    return True


def _truncated_zip(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts as a zip file (torch's format) but lacks the end a complete one has."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def _read_training_checkpoint(path: str | os.PathLike) -> Any:
    """The sorted keys of the training state at ``path`` (or what it holds, when not a mapping of state dicts),
    after checking that it is a readable, complete PyTorch file with finite values."""
    if os.path.getsize(path) == 0:
        raise CheckpointError(path, "empty (0 bytes): remove it, or start afresh with --overwrite true")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        cut = isinstance(e, EOFError) or _truncated_zip(path)
        problem = "truncated (an interrupted copy?)" if cut else "not a readable PyTorch checkpoint"
        raise CheckpointError(
            path,
            f"{problem} ({type(e).__name__}: {str(e).strip()[:200]}); remove it, or start afresh with --overwrite true",
        ) from e
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, Mapping) for v in ckpt.values()):
        return checkpoint_kind(ckpt)
    require_finite(ckpt, path)
    return sorted(map(str, ckpt))


def resume_from(loader: CheckpointLoader, trainer: Engine, resume: bool) -> bool:
    """Attach ``loader`` to ``trainer`` when ``resume`` is asked for and its checkpoint exists.

    Returns whether training resumes; ``resume`` without a checkpoint starts afresh, with a log line saying so. The
    checkpoint is checked first (:func:`check_training_checkpoint`, with every entry the loader restores).
    """
    if not as_bool(resume, "resume"):
        return False
    if not os.path.isfile(loader.load_path):
        logger.warning(f"--resume: no checkpoint at {loader.load_path}, training starts from scratch")
        return False
    check_training_checkpoint(loader.load_path, True, expected=tuple(loader.load_dict))
    loader.attach(trainer)
    logger.info(f"--resume: training continues from {loader.load_path}")
    return True
