"""Starting a run in an ``output_dir`` without harming another run: one run at a time (a lock file), no silent
restart over a finished or stopped run, and ``--resume true`` only with the settings the run was started with.

:func:`start_run` is what the configs call in ``initialize``, before any long work:

1. the folder is claimed as a bundle output (:func:`pix2rep_bundle.outputs.claim_output_dir`: never the dataset
   folder, never a non-empty folder the bundle did not make unless ``--overwrite true``);
2. ``<output_dir>/.run.lock`` is taken (:class:`~pix2rep_bundle.run_lock.RunLock`): a second run into the same folder
   stops with an error naming the first one's process, while a lock left by a process that no longer runs (a crash)
   is taken over with a warning; it is removed when this process ends;
3. a folder that holds another run (its checkpoint, written at the end of every epoch with the run's best network)
   is refused unless ``--resume true`` (continue it) or ``--overwrite true`` (start afresh over it);
4. with ``--resume true``, every setting that defines the run (network, data, loss, mode, K, seeds, schedule, ...)
   must equal the recorded one; each difference is named (:func:`~pix2rep_bundle.run_record.differing_settings`).
   Settings of speed only (``amp``, ``channels_last``, ``compile``, ``augment_on_device``, ``num_workers``, the
   device) may change;
5. ``run_info.json`` is written (:func:`~pix2rep_bundle.run_record.write_run_record`): the settings, command,
   versions and commit, and on a resume the earlier starts under ``"started_before"``.

Inference runs keep their own record in their output folder (:mod:`pix2rep_bundle.inference_runs`, whose names the
configs import from here too: :func:`start_inference_run`, :class:`InferenceRunRecord`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.inference_runs import (  # noqa: F401 (re-exported: the configs import them from here)
    INFERENCE_KIND,
    InferenceRunRecord,
    check_inference_folder,
    checkpoint_fingerprint,
    finish_inference_run,
    segmentation_files,
    start_inference_run,
)
from pix2rep_bundle.outputs import claim_output_dir
from pix2rep_bundle.run_lock import LOCK_NAME, RunLock  # noqa: F401 (LOCK_NAME re-exported)
from pix2rep_bundle.run_record import (  # noqa: F401 (SPEED_SETTINGS re-exported)
    RUN_RECORD,
    SPEED_SETTINGS,
    differing_settings,
    read_record,
    refuse_changes,
    write_run_record,
)
from pix2rep_bundle.settings import as_bool

logger = logging.getLogger(__name__)

RUN_KIND = "run"  # the marker kind of a training run's output folder (models/ is one, see models/.pix2rep_bundle.json)


def start_run(
    output_dir: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    settings: Mapping[str, Any],
    resume: Any = False,
    overwrite: Any = False,
    dataset_dir: str | os.PathLike | None = None,
    bundle_root: str = ".",
    write_record: bool = True,
) -> str:
    """Claim ``output_dir`` for a training run (pretraining or few-shot) and record it; see the module docstring.

    Returns the path of ``run_info.json``. ``write_record=False`` checks and locks without writing the record
    (processes other than rank 0)."""
    resume, overwrite = as_bool(resume, "resume"), as_bool(overwrite, "overwrite")
    folder = Path(output_dir)
    claim_output_dir(folder, RUN_KIND, overwrite=overwrite, protected={"dataset folder": dataset_dir})
    lock = RunLock(folder)
    lock.acquire()
    try:
        return _check_and_record(folder, Path(checkpoint_path), settings, resume, overwrite, bundle_root, write_record)
    except BaseException:
        lock.release()  # refused: the folder is left as it was
        raise


def _check_and_record(
    folder: Path,
    checkpoint: Path,
    settings: Mapping[str, Any],
    resume: bool,
    overwrite: bool,
    bundle_root: str,
    write_record: bool,
) -> str:
    record = read_record(folder / RUN_RECORD) or {}
    if checkpoint.is_file():
        if resume and record.get("settings"):
            refuse_changes(
                folder,
                "--resume true with settings that differ from the run being resumed",
                differing_settings(record["settings"], settings),
                "resume with its settings, or start a new run in another --output_dir",
            )
        elif resume:
            logger.warning(f"--resume: {folder / RUN_RECORD} is missing, the settings cannot be compared")
        elif overwrite:
            logger.warning(f"--overwrite true: a new run replaces the files of the earlier run in {folder}")
        else:
            raise DataError(
                folder,
                f"holds another run (its checkpoint {checkpoint}): continue it with --resume true, "
                "start afresh over it with --overwrite true (its files are replaced), or choose "
                "another --output_dir",
            )
    if not write_record:
        return str(folder / RUN_RECORD)
    history = (
        record.get("started_before", []) + [{k: record.get(k) for k in ("started", "command", "git_commit")}]
        if resume and record
        else []
    )
    return write_run_record(folder, settings, bundle_root, started_before=history)


def require_batches(loader: Any, what: str) -> int:
    """The number of batches of ``loader``; DataError when it gives none (e.g. ``--batch_size`` larger than the
    slices with ``drop_last``), so that a run that cannot train or validate stops before writing anything."""
    count = len(loader)
    if count == 0:
        dataset = getattr(loader, "dataset", None)
        size = f"{len(dataset)} slices" if dataset is not None else "no slices"
        raise DataError(
            what,
            f"the {what} data give no batch ({size}, --batch_size {loader.batch_size}"
            f"{', incomplete batches dropped' if getattr(loader, 'drop_last', False) else ''}): "
            "lower --batch_size or add data",
        )
    return count
