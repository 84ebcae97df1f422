"""MONAI Label's inference follows the form of the model file it loads.

MONAI Label 0.8.5 parses the bundle's ``network_def`` once, when the server starts, and loads every later
``models/*.pt`` into that network with ``strict=False``. The network's form, though, is the file's: its slice context
(input channels) and its ensemble size (:mod:`pix2rep_bundle.ensemble`). After a ``/train/`` that changed either, or
for a ``model_filename`` of another form, the weights would not fit: a size mismatch, or worse, an ensemble's weights
skipped and a single network left at random. :func:`follow_model_file` re-parses the task's config for the file
first, so ``network_def`` and the inferer are built for it. It reads only attributes of MONAI Label's
``BundleInferTask`` and imports nothing of ``monailabel``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from pix2rep_bundle.slice_context import FIRST_CONV, slice_context_of
from pix2rep_bundle.state_dicts import ensemble_size, first_network_state, peek_state_dict

logger = logging.getLogger(__name__)


def state_form(state: Mapping[str, Any]) -> tuple[int, int]:
    """(networks, slice context) of a segmentation state dict, a built network's or a file's: an ensemble's size (1
    for one network) and the neighbours each side its first convolution takes."""
    return ensemble_size(state) or 1, slice_context_of(state)


def file_form(path: str | os.PathLike) -> tuple[int, int]:
    """:func:`state_form` of a segmentation checkpoint, read once; (1, 0) for a file that is missing or unreadable
    (loading it then says why)."""
    return state_form(peek_state_dict(path) or {})


def model_file(task: Any, request: dict[str, Any]) -> str | None:
    """The file MONAI Label's ``BasicInferTask._get_network`` loads for ``request``: the request's
    ``model_filename`` beside the task's model, where the task accepts one and it exists, else the task's model."""
    path = task.get_path()
    name = request.get("model_filename")
    if name and getattr(task, "_config", {}).get("model_filename") and task.path:
        name = name if isinstance(name, str) else name[0]
        chosen = os.path.join(os.path.dirname(task.path[0]), name)
        path = chosen if os.path.exists(chosen) else path
    return path


def follow_model_file(task: Any, request: dict[str, Any]) -> bool:
    """Rebuild a ``BundleInferTask``'s network and inferer when the file it will load for ``request`` has another
    form than its network: ``ckpt_path`` set to that file, the config parsed afresh, the cached networks dropped.
    Returns whether it rebuilt them (False for other tasks, and for a file that fits)."""
    network, config = getattr(task, "network", None), getattr(task, "bundle_config", None)
    if not isinstance(network, nn.Module) or config is None:
        return False
    served_state = network.state_dict()
    if FIRST_CONV not in first_network_state(served_state):
        return False
    path = model_file(task, request)
    if path is None:
        return False
    wanted, served = file_form(path), state_form(served_state)  # the file read once a request
    if wanted == served:
        return False
    logger.info(f"{path}: {wanted} (networks, slice context), the served network {served}: rebuilt")
    config["ckpt_path"] = path
    config.parse(reset=True)  # slice_context, ensemble_members, network_def and the inferer follow ckpt_path
    task.network = config.get_parsed_content("network_def", instantiate=True)
    task._networks.clear()
    return True
