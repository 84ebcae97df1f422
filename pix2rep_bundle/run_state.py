"""What a long run keeps beside its outputs: random-number states for resuming, a clean stop on Ctrl-C, and a
record of how the run was made (seed, settings, command, versions, commit)."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pix2rep_bundle.io import write_json_atomic

logger = logging.getLogger(__name__)

RUN_RECORD = "run_info.json"
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


def _git_commit(folder: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _versions() -> dict[str, str]:
    import ignite
    import monai

    from pix2rep_bundle import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "numpy": np.__version__,
        "pix2rep_bundle": __version__,
    }


def write_run_record(
    output_dir: str | os.PathLike,
    settings: Mapping[str, Any],
    bundle_root: str = ".",
    started_before: list[dict[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``run_info.json`` into ``output_dir``: the given settings (seed, data, sizes, ...), the command
    line, the time, the device, the library versions and the bundle's git commit (``-dirty`` when the
    working tree has changes; ``null`` outside a git checkout), the earlier starts of a resumed run
    (``started_before``) and any ``extra`` entries, in one atomic write. Returns its path."""
    path = os.path.join(os.fspath(output_dir), RUN_RECORD)
    record = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv else [],
        "settings": {k: plain_value(v) for k, v in settings.items()},
        "versions": _versions(),
        "git_commit": _git_commit(os.path.abspath(bundle_root)),
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    if started_before:
        record["started_before"] = started_before
    record.update(extra or {})
    write_json_atomic(path, record)
    return path


def plain_value(value: Any) -> Any:
    """A JSON-friendly form of a config value (devices and paths as strings)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return str(value)
