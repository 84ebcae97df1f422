"""MONAI Label: which study to annotate next, by the Pix2Rep selection criterion (:mod:`pix2rep_bundle.selection`).

:class:`RepresentativeStudy` is a MONAI Label ``Strategy``: given the studies already labelled, it proposes the
unlabelled study that most reduces the distance of the whole pool to its nearest labelled study, in the shipped
backbone's feature space (cluster shares of the dense features, Hellinger distance; the first study, with nothing
labelled, is the pool's medoid). No label is read. Every study is prepared as ``configs/inference.yaml`` prepares
its inputs (spacing, [0, 1] intensities, crop). Add it to a MONAI Label app (docs/README.md, "Serve in MONAI Label")::

    from pix2rep_bundle.active_learning import RepresentativeStudy

    strategies["pix2rep_representative"] = RepresentativeStudy(bundle_path)

This module imports ``monailabel``: it is for the MONAI Label server's environment.
"""

from __future__ import annotations

import logging
import os

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from pix2rep_bundle.selection import propose_next_study

logger = logging.getLogger(__name__)


class RepresentativeStudy(Strategy):
    """MONAI Label strategy: the unlabelled study that best completes the labelled ones' coverage of the pool."""

    def __init__(self, bundle_path: str | os.PathLike, device: str = "cpu"):
        super().__init__("Pix2Rep: the unlabelled study that best covers the pool with the labelled ones")
        self.bundle_path, self.device = os.fspath(bundle_path), device

    def __call__(self, request: dict, datastore: Datastore) -> dict | None:
        label_tag, labels = request.get("label_tag"), request.get("labels")
        unlabelled = datastore.get_unlabeled_images(label_tag, labels)
        labelled = datastore.get_labeled_images(label_tag, labels)
        study = propose_next_study(
            self.bundle_path,
            {i: datastore.get_image_uri(i) for i in unlabelled},
            {i: datastore.get_image_uri(i) for i in labelled},
            device=self.device,
        )
        if study is None:
            return None
        logger.info(f"Pix2Rep representative: {study} (of {len(unlabelled)} unlabelled, {len(labelled)} labelled)")
        return {"id": study}
