"""The learning rates of ``configs/train.yaml`` over a run: the body's warm-up and the decay of every rate.

:class:`BodyWarmup` is an Ignite handler over the optimizer's parameter groups (``finetune``: body, head; see
:func:`pix2rep_bundle.segmentation.parameter_groups`). For the first ``head_only_epochs`` epochs the body's learning
rate is 0, so only the head (a linear probe on the pretrained features) learns, as in LP-FT (Kumar et al., ICLR
2022); over the next ``body_warmup_epochs`` epochs it rises linearly, iteration by iteration, to ``lr_body``. With
``lr_decay: cosine`` every group's rate then also follows half a cosine, from its full value at the first iteration
towards 0 at the last (``none``, the default: constant). With both warm-up settings at 0 and no decay it changes
nothing. The rates are computed from the trainer's iteration count, so a resumed run continues the same schedule.
"""

from __future__ import annotations

import math

from ignite.engine import Engine, Events
from torch.optim import Optimizer

BODY_GROUP = "body"
LR_DECAYS = ("none", "cosine")


def body_rate_factor(iteration: int, epoch_length: int, head_only_epochs: int, body_warmup_epochs: int) -> float:
    """The fraction of ``lr_body`` in force at ``iteration`` (1-based): 0 while the head trains alone, then a linear
    ramp that reaches 1 at the end of the warm-up, then 1."""
    done = (iteration - 1) / epoch_length  # epochs completed before this iteration
    if done < head_only_epochs:
        return 0.0
    if body_warmup_epochs <= 0:
        return 1.0
    return min(1.0, (done - head_only_epochs + 1.0 / epoch_length) / body_warmup_epochs)


def check_lr_decay(lr_decay: str) -> str:
    """``lr_decay`` if it is one of :data:`LR_DECAYS`, else a ValueError naming the setting, before any work."""
    if lr_decay not in LR_DECAYS:
        raise ValueError(f"--lr_decay must be one of {', '.join(LR_DECAYS)}, got {lr_decay!r}")
    return lr_decay


def decay_factor(iteration: int, total_iterations: int, lr_decay: str) -> float:
    """The fraction of every group's rate in force at ``iteration`` (1-based) of ``total_iterations``: 1 with
    ``none``; with ``cosine``, ``(1 + cos(pi t)) / 2`` at ``t = (iteration - 1) / total_iterations``."""
    if check_lr_decay(lr_decay) == "none":
        return 1.0
    progress = min(1.0, max(0.0, (iteration - 1) / max(1, total_iterations)))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def check_warmup(mode: str, head_only_epochs: int, body_warmup_epochs: int) -> None:
    """ValueError, before any work, for a warm-up that is not a whole number >= 0 or is asked outside ``finetune``."""
    for name, value in (("head_only_epochs", head_only_epochs), ("body_warmup_epochs", body_warmup_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"--{name} must be a whole number >= 0, got {value!r}")
    if (head_only_epochs or body_warmup_epochs) and mode != "finetune":
        raise ValueError(
            f"--head_only_epochs / --body_warmup_epochs apply to --mode finetune (a body learning at its own rate), "
            f"not to --mode {mode}"
        )


class BodyWarmup:
    """Set the learning rates before every iteration: the body group's 0 for ``head_only_epochs``, then a linear ramp
    to ``lr_body`` over ``body_warmup_epochs`` (both >= 0), and every group's times :func:`decay_factor` (no-op when
    both are 0 and ``lr_decay`` is ``none``)."""

    def __init__(
        self, optimizer: Optimizer, head_only_epochs: int = 0, body_warmup_epochs: int = 0, lr_decay: str = "none"
    ):
        check_warmup("finetune", head_only_epochs, body_warmup_epochs)
        self.optimizer = optimizer
        self.head_only_epochs = head_only_epochs
        self.body_warmup_epochs = body_warmup_epochs
        self.lr_decay = check_lr_decay(lr_decay)
        self.warmup = head_only_epochs > 0 or body_warmup_epochs > 0
        if self.warmup and not any(group.get("name") == BODY_GROUP for group in optimizer.param_groups):
            raise ValueError(
                "--head_only_epochs / --body_warmup_epochs apply to --mode finetune (a body learning at its own rate)"
            )
        self.active = self.warmup or self.lr_decay != "none"
        self.base_rates = [group["lr"] for group in optimizer.param_groups]

    def attach(self, engine: Engine) -> None:
        if self.active:
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        iteration, epoch_length = engine.state.iteration, engine.state.epoch_length
        warm = body_rate_factor(iteration, epoch_length, self.head_only_epochs, self.body_warmup_epochs)
        decay = decay_factor(iteration, engine.state.max_epochs * epoch_length, self.lr_decay)
        for group, lr in zip(self.optimizer.param_groups, self.base_rates):
            group["lr"] = lr * decay * (warm if group.get("name") == BODY_GROUP else 1.0)
