"""MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` with mixed precision on the engine's own device type.

MONAI 1.6.1 wraps the forward pass in ``torch.autocast("cuda", ...)`` only: with ``amp=True`` on a CPU nothing is
computed in bf16 (and a warning says autocast is disabled). These two engines open
``torch.autocast(<the engine's device type>, **amp_kwargs)`` instead, so ``--amp true`` means bf16 (the configs'
``amp_kwargs``) on a CPU as on a GPU. Only the network's forward pass runs under autocast: its output is brought
back to float32 before the loss, the post-processing and the metrics, so losses, geometry and Dice are computed in
float32. bf16 needs no gradient scaler, so there is none (a ``GradScaler`` is kept only for float16 on CUDA, as
MONAI does).

- :func:`autocast_context`: the context both engines open;
- :class:`AutocastTrainer`: the iteration of ``SupervisedTrainer`` (prepare, forward, loss, backward, step, the
  same iteration events), with :meth:`AutocastTrainer.forward_loss` as the one place a subclass changes the loss
  (Mean Teacher does);
- :class:`AutocastEvaluator`: the iteration of ``SupervisedEvaluator`` under the same context;
- :func:`check_finite_loss`: every training iteration stops the run (:class:`NonFiniteLossError`, a non-zero exit)
  when its loss is nan or inf, before the backward pass and the optimiser step. Ignite's ``TerminateOnNan`` runs
  after the step (the weights are already spoilt) and ends the run as if it had completed (exit code 0, and a best
  network already saved from non-finite weights would stand): not enough on its own.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.utils.enums import CommonKeys as Keys

__all__ = [
    "autocast_context",
    "bf16_is_fast",
    "as_float32",
    "check_finite_loss",
    "NonFiniteLossError",
    "AutocastTrainer",
    "AutocastEvaluator",
]


class NonFiniteLossError(FloatingPointError):
    """A training loss that is nan or inf: the run stops before the optimiser step (see :func:`check_finite_loss`)."""


def check_finite_loss(engine: Any, loss: torch.Tensor) -> None:
    """:class:`NonFiniteLossError` naming the epoch, the iteration and the learning rates when ``loss`` is not finite.

    The trainers call it on every loss before the backward pass, so no step is taken with it."""
    if bool(torch.isfinite(loss.detach()).all()):
        return
    word = "nan" if bool(torch.isnan(loss.detach()).any()) else "inf"
    rates = sorted({group["lr"] for group in engine.optimizer.param_groups})
    epoch_length = engine.state.epoch_length or engine.state.iteration
    in_epoch = (engine.state.iteration - 1) % epoch_length + 1
    raise NonFiniteLossError(
        f"epoch {engine.state.epoch}/{engine.state.max_epochs}, iteration {in_epoch}/{epoch_length}: the training "
        + f"loss is {word}; lower the learning rate (now {', '.join(f'{r:g}' for r in rates)}: --learning_rate in "
        + "pretraining, --lr_head and --lr_body in few-shot training) or check the data. Training stopped before this "
        + "step; no network with non-finite weights is written"
    )


def autocast_context(
    enabled: bool, device: torch.device | str, amp_kwargs: dict[str, Any] | None = None
) -> AbstractContextManager:
    """``torch.autocast(device.type, **amp_kwargs)`` when ``enabled``, else a context that does nothing.

    ValueError when the device type has no autocast (e.g. ``mps`` on older torch), naming it."""
    if not enabled:
        return nullcontext()
    device_type = torch.device(device).type
    if not torch.amp.is_autocast_available(device_type):
        raise ValueError(f"--amp true: torch has no autocast for device type '{device_type}'; use --amp false")
    return torch.autocast(device_type, **(amp_kwargs or {}))


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 compute is native on ``device``: a CUDA GPU with bf16 units, or a CPU with AVX-512 BF16 / AMX
    (oneDNN's check). The configs' ``amp`` default; elsewhere bf16 would be emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """A floating-point network output in float32 (bf16/fp16 under autocast); anything else unchanged."""
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dtype != torch.float32:
        return tensor.float()
    return tensor


def _check_supported(kwargs: dict[str, Any], engine: str) -> None:
    if kwargs.get("compile", False):
        raise ValueError(
            f"{engine} does not take compile=True: compile the network itself "
            "(pix2rep_bundle.networks.compile_network, --compile true in configs/pretrain.yaml)"
        )
    if kwargs.get("accumulation_steps", 1) != 1:
        raise ValueError(f"{engine} does not support accumulation_steps > 1")


def _start_iteration(engine: Any, batchdata: Any) -> tuple[torch.Tensor, Any, tuple, dict]:
    """``prepare_batch`` on the engine's device, ``state.output`` started with image and label; returns
    ``(inputs, targets, args, kwargs)``."""
    if batchdata is None:
        raise ValueError("Must provide batch data for current iteration.")
    batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
    inputs, targets, args, kwargs = (*batch, (), {}) if len(batch) == 2 else batch
    engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
    return inputs, targets, args, kwargs


class _Autocast:
    """The mixed-precision context of an engine with ``amp``, ``amp_kwargs`` and ``state.device``."""

    amp: bool
    amp_kwargs: dict[str, Any]
    state: Any

    def autocast(self) -> AbstractContextManager:
        """The mixed-precision context of this engine (nothing when ``amp`` is off)."""
        return autocast_context(self.amp, self.state.device, self.amp_kwargs)


def _uses_float16(amp: bool, device: torch.device, amp_kwargs: dict[str, Any]) -> bool:
    return amp and device.type == "cuda" and amp_kwargs.get("dtype", torch.float16) == torch.float16


class AutocastTrainer(_Autocast, SupervisedTrainer):
    """``SupervisedTrainer`` whose ``amp`` autocasts on the engine's device type (CPU or CUDA), bf16 by default
    of the configs (``amp_kwargs={"dtype": torch.bfloat16}``).

    One iteration: ``prepare_batch``; :meth:`forward_loss` (the inferer under autocast, its output in float32,
    ``FORWARD_COMPLETED``, the loss); ``LOSS_COMPLETED``; backward; ``BACKWARD_COMPLETED``; optimiser step;
    ``MODEL_COMPLETED``. Takes every ``SupervisedTrainer`` argument but ``compile`` and ``accumulation_steps``
    (ValueError).
    """

    def __init__(self, **kwargs: Any):
        _check_supported(kwargs, type(self).__name__)
        super().__init__(**kwargs)
        self.autocast()  # an unsupported device type fails here, not at the first iteration

    def run(self) -> None:  # type: ignore[override]
        """Train (MONAI's ``Trainer.run``, whose CUDA ``GradScaler`` is replaced by one only for float16 on CUDA)."""
        float16 = _uses_float16(self.amp, self.state.device, self.amp_kwargs)
        self.scaler = torch.amp.GradScaler("cuda") if float16 else None
        Workflow.run(self)

    def forward_loss(self, inputs: torch.Tensor, targets: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        """Forward pass (under :meth:`autocast`) and float32 loss of one batch: puts the float32 prediction in
        ``state.output["pred"]``, fires ``FORWARD_COMPLETED`` and returns the scalar loss."""
        with self.autocast():
            pred = self.inferer(inputs, self.network, *args, **kwargs)
        self.state.output[Keys.PRED] = pred = as_float32(pred)
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        return self.loss_function(pred, targets).mean()

    def _iteration(self, engine: AutocastTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        inputs, targets, args, kwargs = _start_iteration(engine, batchdata)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        loss = engine.forward_loss(inputs, targets, args, kwargs)
        engine.state.output[Keys.LOSS] = loss
        check_finite_loss(engine, loss)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class AutocastEvaluator(_Autocast, SupervisedEvaluator):
    """``SupervisedEvaluator`` whose ``amp`` autocasts on the engine's device type (CPU or CUDA).

    One iteration: ``prepare_batch``; the inferer in the evaluator's mode (``eval``, no gradients) under autocast,
    its output in float32; ``FORWARD_COMPLETED``, ``MODEL_COMPLETED`` (post-processing, then metrics). Takes every
    ``SupervisedEvaluator`` argument but ``compile`` (ValueError).
    """

    def __init__(self, **kwargs: Any):
        _check_supported(kwargs, type(self).__name__)
        super().__init__(**kwargs)
        self.autocast()  # an unsupported device type fails here, not at the first iteration

    def _iteration(self, engine: AutocastEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        inputs, targets, args, kwargs = _start_iteration(engine, batchdata)
        with engine.mode(engine.network), engine.autocast():
            pred = engine.inferer(inputs, engine.network, *args, **kwargs)
        engine.state.output[Keys.PRED] = as_float32(pred)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
