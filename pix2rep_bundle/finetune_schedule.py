"""Fine-tuning that keeps what pretraining learned: the head first, then the body's learning rate ramped up.

:class:`BodyWarmup` is an Ignite handler over the ``finetune`` optimizer's two parameter groups (body, head; see
:func:`pix2rep_bundle.segmentation.parameter_groups`). For the first ``head_only_epochs`` epochs the body's learning
rate is 0, so only the head (a linear probe on the pretrained features) learns, as in LP-FT (Kumar et al., ICLR
2022); over the next ``body_warmup_epochs`` epochs it rises linearly, iteration by iteration, to ``lr_body``. With
both at 0 (the default) it changes nothing. The rate is computed from the trainer's iteration count, so a resumed
run continues the same schedule.
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from torch.optim import Optimizer

BODY_GROUP = "body"


def body_rate_factor(iteration: int, epoch_length: int, head_only_epochs: int, body_warmup_epochs: int) -> float:
    """The fraction of ``lr_body`` in force at ``iteration`` (1-based): 0 while the head trains alone, then a linear
    ramp that reaches 1 at the end of the warm-up, then 1."""
    done = (iteration - 1) / epoch_length  # epochs completed before this iteration
    if done < head_only_epochs:
        return 0.0
    if body_warmup_epochs <= 0:
        return 1.0
    return min(1.0, (done - head_only_epochs + 1.0 / epoch_length) / body_warmup_epochs)


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
    """Set the body group's learning rate before every iteration: 0 for ``head_only_epochs``, then a linear ramp to
    ``lr_body`` over ``body_warmup_epochs`` (both >= 0; no-op when both are 0)."""

    def __init__(self, optimizer: Optimizer, head_only_epochs: int = 0, body_warmup_epochs: int = 0):
        check_warmup("finetune", head_only_epochs, body_warmup_epochs)
        self.optimizer = optimizer
        self.head_only_epochs = head_only_epochs
        self.body_warmup_epochs = body_warmup_epochs
        self.body_groups = [group for group in optimizer.param_groups if group.get("name") == BODY_GROUP]
        self.active = head_only_epochs > 0 or body_warmup_epochs > 0
        if self.active and not self.body_groups:
            raise ValueError(
                "--head_only_epochs / --body_warmup_epochs apply to --mode finetune (a body learning at its own rate)"
            )
        self.lr_body = [group["lr"] for group in self.body_groups]

    def attach(self, engine: Engine) -> None:
        if self.active:
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        factor = body_rate_factor(
            engine.state.iteration, engine.state.epoch_length, self.head_only_epochs, self.body_warmup_epochs
        )
        for group, lr in zip(self.body_groups, self.lr_body):
            group["lr"] = lr * factor
