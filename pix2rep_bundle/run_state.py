"""What a long run keeps beside its outputs: random-number states for resuming and a clean stop on Ctrl-C. The record
of how the run was made (``run_info.json``) is :mod:`pix2rep_bundle.run_record`'s (its names are re-exported here)."""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pix2rep_bundle.run_record import RUN_RECORD, plain_value, write_run_record  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

INTERRUPTED_EXIT_CODE = 130  # the shell's code for a run stopped by SIGINT


class RNGState:
    """The global random-number states (Python, NumPy, torch CPU and CUDA) as a checkpoint entry.

    Stored as tensors and plain numbers, so ``torch.load(weights_only=True)`` (MONAI's ``CheckpointLoader``)
    reads them back.
    """

    def state_dict(self) -> dict[str, Any]:
        version, keys, gauss = random.getstate()
        name, np_keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
            "numpy": {
                "name": name,
                "keys": torch.from_numpy(np_keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(k) for k in py["keys"].tolist()), py["gauss"]))
        npy = state["numpy"]
        np.random.set_state(
            (
                npy["name"],
                npy["keys"].numpy().astype(np.uint32),
                int(npy["pos"]),
                int(npy["has_gauss"]),
                float(npy["cached"]),
            )
        )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class GracefulStop:
    """On SIGINT (Ctrl-C) or SIGTERM: finish the current iteration, write the resumable checkpoint, and exit
    with code 130, saying how to resume. A second signal stops at once, as usual."""

    def __init__(
        self, checkpoint_saver: Callable[[Engine], None], signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    ):
        self.checkpoint_saver = checkpoint_saver
        self.signals = signals
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._install)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._maybe_stop)
        engine.add_event_handler(Events.COMPLETED, self._restore)

    def _install(self, engine: Engine) -> None:
        try:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._request)
        except ValueError:  # not the main thread (e.g. inside a server): no signal handling
            self._previous.clear()

    def _request(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # second signal: the default behaviour
            self._restore()
            signal.raise_signal(signum)
            return
        self.requested = signum
        logger.warning(f"{signal.Signals(signum).name}: stopping after this iteration (again to stop at once)")

    def _maybe_stop(self, engine: Engine) -> None:
        if self.requested is None:
            return
        self.checkpoint_saver(engine)
        self._restore()
        logger.warning(
            f"stopped at epoch {engine.state.epoch}, iteration {engine.state.iteration}; continue with --resume true"
        )
        raise SystemExit(INTERRUPTED_EXIT_CODE)

    def _restore(self, engine: Engine | None = None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
