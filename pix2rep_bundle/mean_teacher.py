"""Mean Teacher semi-supervised fine-tuning of the segmentation network (Tarvainen and Valpola, NeurIPS 2017).

A student (the trained network) learns from the K labelled subjects (the config's Dice + cross-entropy) and
from unlabelled slices of the training pool, where its prediction on one augmented view must agree with that
of a teacher on another view of the same slice. The teacher is an exponential moving average (EMA) of the
student and is the network that is validated and saved.

The two views come from :func:`pix2rep_bundle.transforms.paired_views`, as in Pix2Rep pretraining: their
spatial transforms are recorded, so the teacher's probabilities are warped into the student's view and compared
on aligned pixels of the shared field of view only (:class:`ConsistencyLoss`).

- :class:`EMAUpdate`: Ignite handler, ``teacher <- a teacher + (1 - a) student`` after every iteration;
- :func:`sigmoid_rampup`: the ramp-up of the consistency weight;
- :class:`ConsistencyLoss`: masked mean squared error between aligned class probabilities;
- :class:`MeanTeacherTrainer`: an ``AutocastTrainer`` whose loss adds the consistency term; ``configs/mean_teacher.yaml``
  makes it the trainer of ``configs/train.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from pix2rep_bundle.engines import AutocastTrainer, as_float32
from pix2rep_bundle.geometry import Alignment, warp
from pix2rep_bundle.workflows import PrepareViewPairs

UNSUPPORTED_MODES = ("linear_probe",)


def check_mean_teacher(
    mode: str, mean_teacher: Any = True, distributed: bool | None = None, slice_context: int = 0
) -> bool:
    """Whether Mean Teacher is on; ValueError for the combinations it does not support.

    Mean Teacher trains the whole student, so it combines with ``scratch`` and ``finetune`` but not with the
    frozen body of ``linear_probe``; it runs in a single process (with ``configs/multi_gpu_train.yaml`` it is
    refused; ``distributed`` None: whether this process's group is up), on single slices (``slice_context`` 0: its
    unlabelled views are one-channel). ``configs/mean_teacher.yaml`` calls it first in ``initialize``.
    """
    from pix2rep_bundle.settings import as_bool

    if distributed is None:  # a torch build without torch.distributed has no is_initialized
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    on = as_bool(mean_teacher, "mean_teacher")
    if on and mode in UNSUPPORTED_MODES:
        raise ValueError(
            f"Mean Teacher (configs/mean_teacher.yaml) does not combine with --mode {mode} (a frozen body): "
            "use --mode finetune (student and teacher start from the Pix2Rep backbone) or --mode scratch"
        )
    if on and distributed:
        raise ValueError(
            "Mean Teacher (configs/mean_teacher.yaml) is not supported with configs/multi_gpu_train.yaml: "
            "train it in one process, merged over configs/train.yaml"
        )
    if on and slice_context:
        raise ValueError(
            f"Mean Teacher (configs/mean_teacher.yaml) does not combine with --slice_context {slice_context}: its "
            "unlabelled views are single slices; train with --slice_context 0"
        )
    return on


def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(current / length, 0, 1)``: from about 0.007 to 1 over ``length``
    (1 at once when ``length`` is 0)."""
    if length <= 0:
        return 1.0
    t = min(max(float(current) / float(length), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def _unwrap(network: nn.Module) -> nn.Module:
    """The module inside ``DataParallel``/``DistributedDataParallel``, else ``network``."""
    return network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network


class EMAUpdate:
    """Ignite handler: after each update of the student, ``teacher = a teacher + (1 - a) student``.

    ``a = min(1 - 1 / (step + 1), decay)`` where ``step`` counts the updates (1 at the first): the teacher
    averages the student uniformly while ``step < 1 / (1 - decay)``, then exponentially (the Mean Teacher rule;
    Ignite's ``EMAHandler`` ramps its momentum linearly instead and owns its own copy of the model).
    Buffers (e.g. batch-norm running statistics; BasicUNet's instance norm has none) are copied from the student.
    ``state_dict`` holds the step count, so a resumed run continues the same schedule (the teacher's weights
    are saved beside it).

    Args:
        student: the trained network (``DistributedDataParallel`` is unwrapped).
        teacher: a network of the same structure, e.g. ``copy.deepcopy(student)``; updated in place.
        decay: the EMA decay, in ``[0, 1]``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, decay: float = 0.99):
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {decay}")
        self.student, self.teacher = _unwrap(student), _unwrap(teacher)
        names = [n for n, _ in self.student.named_parameters()], [n for n, _ in self.teacher.named_parameters()]
        if names[0] != names[1]:
            raise ValueError("the teacher must have the student's structure (e.g. copy.deepcopy(student))")
        self.decay = float(decay)
        self.step = 0

    def attach(self, engine: Engine, event: Any = Events.ITERATION_COMPLETED) -> None:
        engine.add_event_handler(event, self)

    def alpha(self, step: int) -> float:
        """The teacher's weight at update ``step`` (1-based)."""
        return min(1.0 - 1.0 / (step + 1), self.decay)

    @torch.no_grad()
    def __call__(self, engine: Engine | None = None) -> None:
        self.step += 1
        a = self.alpha(self.step)
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(a).add_(s.detach().to(t.dtype), alpha=1.0 - a)
        for t, s in zip(self.teacher.buffers(), self.student.buffers()):
            t.copy_(s)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])


class ConsistencyLoss(nn.Module):
    """Mean squared error between the student's class probabilities on view 1 and the teacher's on view 2
    brought into view 1, over the pixels of the shared field of view.

    ``forward(student_logits, teacher_logits, alignment)``: both ``(B, C, H, W)`` logits, ``alignment`` of the
    view pairs (:func:`pix2rep_bundle.geometry.alignment_from_batch`, in view 1's frame). The teacher's softmax
    is warped with ``alignment.grid`` (bilinear, so a warped pixel is still a distribution) and the squared
    differences are averaged over classes and the pixels where ``alignment.mask`` is 1; other pixels never
    count. A batch without a valid pixel gives 0 (with a gradient, so the step still runs). Computed in float32.
    The teacher side is not differentiated (call it with the teacher's output under ``torch.no_grad``).
    """

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, alignment: Alignment) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape or student_logits.ndim != 4:
            raise ValueError(
                f"expected two (B, C, H, W) outputs of one shape, got {tuple(student_logits.shape)} "
                f"and {tuple(teacher_logits.shape)}"
            )
        b, c, h, w = student_logits.shape
        if tuple(alignment.mask.shape) != (b, 1, h, w):
            raise ValueError(f"alignment mask {tuple(alignment.mask.shape)} does not fit outputs {(b, c, h, w)}")
        device = student_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            student = torch.softmax(student_logits.float(), dim=1)
            teacher = warp(torch.softmax(teacher_logits.detach().float(), dim=1), alignment.grid.to(device))
            mask = alignment.mask.to(device=device, dtype=torch.float32)
            count = mask.sum() * c
            if count <= 0:
                return student.sum() * 0.0
            return ((student - teacher) ** 2 * mask).sum() / count


def _cycle(loader: Iterable) -> Iterator:
    """Batches of ``loader`` forever, a fresh iterator (new random draws) each time it is exhausted."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the unlabelled data loader gives no batch (empty training pool?)")


class MeanTeacherTrainer(AutocastTrainer):
    """A trainer (:class:`~pix2rep_bundle.engines.AutocastTrainer`) of a student with a supervised loss plus a Mean
    Teacher consistency.

    Each iteration takes the labelled batch as usual (``prepare_batch``, ``inferer``, ``loss_function``: the
    supervised loss sees the labelled images and labels only), then the next batch of ``unlabeled_data_loader``
    (view pairs of :func:`~pix2rep_bundle.transforms.paired_views`, through ``unlabeled_prepare_batch``): the
    student sees view 1, the teacher view 2 (under ``torch.no_grad``), and the loss is
    ``supervised + consistency_weight * sigmoid_rampup(iteration - 1, rampup_iterations) * consistency``.
    After the optimiser step, :class:`EMAUpdate` (``self.ema_update``) moves the teacher towards the student.

    The teacher runs in train mode, as the student (Mean Teacher's noise on both sides; for BasicUNet, whose
    instance norm keeps no running statistics and whose dropout is 0, train and eval mode give the same output).

    ``engine.state.output`` holds ``image``, ``label``, ``pred``, ``loss`` (as in ``SupervisedTrainer``) and
    ``sup_loss``, ``consistency_loss`` (detached tensors) and ``consistency_weight`` (a float).
    Gradient accumulation and ``compile`` are not supported (as in ``AutocastTrainer``).

    Args:
        teacher: the teacher network (e.g. ``copy.deepcopy(network)`` with ``requires_grad`` off).
        unlabeled_data_loader: batches of unlabelled view pairs; cycled with a fresh iterator when exhausted.
        ema_decay: the EMA decay of :class:`EMAUpdate`.
        consistency_weight: the weight of the consistency term after the ramp-up.
        rampup_iterations: length of the sigmoid ramp-up of that weight, in iterations (0: none).
        consistency_loss: ``(student_logits, teacher_logits, alignment) -> loss``; default :class:`ConsistencyLoss`.
        unlabeled_prepare_batch: ``(batch, device, non_blocking) -> (cat(view_1, view_2), Alignment)``.
        kwargs: ``SupervisedTrainer`` arguments (``network`` is the student).
    """

    def __init__(
        self,
        teacher: nn.Module,
        unlabeled_data_loader: Iterable,
        ema_decay: float = 0.99,
        consistency_weight: float = 1.0,
        rampup_iterations: int = 0,
        consistency_loss: Callable[..., torch.Tensor] | None = None,
        unlabeled_prepare_batch: Callable | None = None,
        **kwargs: Any,
    ):
        if teacher is None or unlabeled_data_loader is None:
            raise ValueError("MeanTeacherTrainer needs a teacher network and an unlabelled data loader")
        if float(consistency_weight) < 0 or int(rampup_iterations) < 0:
            raise ValueError(
                f"consistency_weight and rampup_iterations must be >= 0, got {consistency_weight} and "
                f"{rampup_iterations}"
            )
        super().__init__(**kwargs)
        self.teacher = teacher
        self.unlabeled_data_loader = unlabeled_data_loader
        self.consistency_weight = float(consistency_weight)
        self.rampup_iterations = int(rampup_iterations)
        self.consistency_loss = ConsistencyLoss() if consistency_loss is None else consistency_loss
        self.unlabeled_prepare_batch = (
            PrepareViewPairs() if unlabeled_prepare_batch is None else unlabeled_prepare_batch
        )
        self.ema_update = EMAUpdate(self.network, teacher, ema_decay)
        self.ema_update.attach(self)
        self._unlabeled: Iterator | None = None

    def current_consistency_weight(self, iteration: int) -> float:
        """The consistency weight at (1-based) ``iteration``."""
        return self.consistency_weight * sigmoid_rampup(iteration - 1, self.rampup_iterations)

    def next_unlabeled_batch(self) -> Any:
        if self._unlabeled is None:
            self._unlabeled = _cycle(self.unlabeled_data_loader)
        return next(self._unlabeled)

    def forward_loss(self, inputs: torch.Tensor, targets: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        """The supervised loss of the labelled batch plus the weighted consistency on the next unlabelled view pairs
        (forward passes under autocast, losses in float32)."""
        sup_loss = super().forward_loss(inputs, targets, args, kwargs)
        views, alignment = self.unlabeled_prepare_batch(
            self.next_unlabeled_batch(), self.state.device, self.non_blocking
        )
        view_1, view_2 = views.chunk(2, dim=0)
        self.teacher.train()
        with self.autocast():
            student = self.inferer(view_1, self.network)
            with torch.no_grad():
                teacher = self.inferer(view_2, self.teacher)
        consistency = self.consistency_loss(as_float32(student), as_float32(teacher), alignment)
        weight = self.current_consistency_weight(self.state.iteration)
        self.state.output.update(
            {"sup_loss": sup_loss.detach(), "consistency_loss": consistency.detach(), "consistency_weight": weight}
        )
        return sup_loss + weight * consistency


def rampup_iterations(epochs: float | None, iterations_per_epoch: int, total_epochs: int) -> int:
    """A ramp-up given in epochs (may be fractional; None: a quarter of ``total_epochs``) as iterations."""
    epochs = 0.25 * float(total_epochs) if epochs is None else float(epochs)
    return int(round(epochs * int(iterations_per_epoch)))
