"""Which subjects to label first: a cold-start choice from the Pix2Rep representation alone (no label is read).

1. **Descriptor.** Every slice of a subject's images goes through the pretrained backbone; the dense features
   (L2-normalised per pixel) of up to ``pixels_per_subject`` pixels inside the body (intensity above
   ``body_threshold`` of the [0, 1]-scaled image) and inside the central ``centre_fraction`` of the image (the
   bundle's default 0.5: around the heart) are kept. A codebook of ``codebook_size`` feature clusters
   (k-means over a sample of every subject's pixels) turns each subject into the share of its pixels in each
   cluster: what tissues and structures, as the representation sees them, the subject is made of. Subjects
   are compared by the Hellinger distance between those distributions.
2. **Choice.** The K subjects that best cover the pool: the k-medoids of the distance matrix (greedy BUILD then
   SWAP, deterministic). K = 1 gives the most typical subject (the medoid); given subjects already labelled,
   :func:`choose_subjects` with ``labelled`` adds those that most reduce the distance of the pool to its nearest
   labelled subject (MONAI Label's ``/activelearning/`` strategy, :mod:`pix2rep_bundle.active_learning`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pix2rep_bundle.bundle_configs import bundle_settings
from pix2rep_bundle.data.preprocessing import volume_loader


@torch.no_grad()
def subject_pixels(
    backbone: nn.Module,
    volumes: Sequence[str],
    pixels_per_subject: int = 4000,
    body_threshold: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
    loader: Callable[[str], torch.Tensor] | None = None,
    centre_fraction: float = 1.0,
) -> np.ndarray:
    """Dense features (L2-normalised) of up to ``pixels_per_subject`` body pixels of one subject's prepared volumes
    (each ``(H, W, S)`` in [0, 1]; ``loader`` reads one, by default a prepared file as it is), drawn evenly at random
    over its slices: ``(P, D)`` float32. ``centre_fraction`` < 1 keeps only the pixels of the central square of that
    fraction of the image's height and width (where the heart lies in a centred cardiac field of view); the whole
    image still goes through the backbone."""
    if not 0 < centre_fraction <= 1:
        raise ValueError(f"centre_fraction must be in (0, 1], got {centre_fraction}")
    loader = loader or volume_loader()
    features, rng = [], np.random.default_rng(seed)
    for path in volumes:
        volume = torch.as_tensor(np.asarray(loader(path)), dtype=torch.float32)  # (H, W, S)
        slices = volume.permute(2, 0, 1)[:, None]  # (S, 1, H, W)
        for start in range(0, slices.shape[0], batch_size):
            batch = slices[start : start + batch_size]
            dense = nn.functional.normalize(backbone(batch.to(device)).float().cpu(), dim=1)  # (B, D, H, W)
            body = (batch[:, 0] > body_threshold) & central_square(batch.shape[-2:], centre_fraction)  # (B, H, W)
            features.append(dense.permute(0, 2, 3, 1)[body])  # (pixels, D)
    pixels = torch.cat(features).numpy() if features else np.zeros((0, 0), np.float32)
    if len(pixels) > pixels_per_subject:
        pixels = pixels[np.sort(rng.choice(len(pixels), pixels_per_subject, replace=False))]
    return pixels.astype(np.float32)


def central_square(size: Sequence[int], fraction: float) -> torch.Tensor:
    """(H, W) boolean mask of the central ``fraction`` of the height and the width (at least one pixel each)."""
    mask = torch.zeros(tuple(size), dtype=torch.bool)
    h, w = (max(1, round(n * fraction)) for n in size)
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    mask[top : top + h, left : left + w] = True
    return mask


def kmeans(points: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Cluster centres of ``points`` (N, D): k-means++ initialisation from ``seed``, then Lloyd iterations."""
    if len(points) < k:
        raise ValueError(f"{len(points)} points cannot make {k} clusters")
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(len(points))]]
    nearest = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        centres.append(points[rng.choice(len(points), p=nearest / nearest.sum())])
        nearest = np.minimum(nearest, ((points - centres[-1]) ** 2).sum(1))
    centres = np.stack(centres)
    for _ in range(iterations):
        assignment = nearest_centre(points, centres)
        updated = np.stack(
            [points[assignment == c].mean(0) if (assignment == c).any() else centres[c] for c in range(k)]
        )
        if np.allclose(updated, centres):
            break
        centres = updated
    return centres


def nearest_centre(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of every point."""
    distances = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None]
    return distances.argmin(1)


def cluster_shares(pixels: Sequence[np.ndarray], centres: np.ndarray) -> np.ndarray:
    """(subjects, clusters): the share of each subject's pixels nearest to each centre."""
    shares = np.zeros((len(pixels), len(centres)))
    for i, points in enumerate(pixels):
        shares[i] = np.bincount(nearest_centre(points, centres), minlength=len(centres)) / max(len(points), 1)
    return shares


def hellinger_distances(shares: np.ndarray) -> np.ndarray:
    """Pairwise Hellinger distances between the rows of ``shares`` (each a distribution)."""
    roots = np.sqrt(shares)
    squared = np.clip((roots**2).sum(1)[:, None] + (roots**2).sum(1)[None] - 2 * roots @ roots.T, 0, None)
    return np.sqrt(squared / 2)


def _cost(distances: np.ndarray, medoids: Sequence[int]) -> float:
    """Sum over the pool of the distance to the nearest medoid."""
    return float(distances[:, list(medoids)].min(1).sum())


def k_medoids(distances: np.ndarray, k: int, fixed: Sequence[int] = ()) -> list[int]:
    """Indices of ``k`` medoids of a distance matrix (added to the ``fixed`` ones, which stay): greedy BUILD (each
    step adds the point that lowers the total distance to the nearest medoid most), then SWAP (exchange a chosen
    medoid with another point while that lowers it). Deterministic: ties go to the lowest index."""
    n = len(distances)
    fixed = [int(i) for i in fixed]
    if k < 0 or k + len(fixed) > n:
        raise ValueError(f"cannot choose {k} of {n - len(fixed)} unchosen points")
    chosen: list[int] = []
    for _ in range(k):
        candidates = [i for i in range(n) if i not in chosen and i not in fixed]
        chosen.append(min(candidates, key=lambda i: (_cost(distances, fixed + chosen + [i]), i)))
    improved = True
    while improved and fixed + chosen:
        improved = False
        for slot in range(len(chosen)):
            for other in range(n):
                if other in chosen or other in fixed:
                    continue
                trial = chosen[:slot] + [other] + chosen[slot + 1 :]
                if _cost(distances, fixed + trial) < _cost(distances, fixed + chosen) - 1e-12:
                    chosen, improved = trial, True
    return chosen


def choose_subjects(
    backbone: nn.Module,
    volumes_by_subject: Mapping[str, Sequence[str]],
    k: int,
    labelled: Sequence[str] = (),
    codebook_size: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    loader: Callable[[str], torch.Tensor] | None = None,
    centre_fraction: float = 1.0,
) -> tuple[list[str], dict[str, np.ndarray | list[str]]]:
    """The ``k`` subjects to label next (after ``labelled``), and the evidence: subject names, cluster shares and
    the distance matrix (for figures). ``loader``, ``centre_fraction``: see :func:`subject_pixels`."""
    subjects = sorted(volumes_by_subject)
    unknown = sorted(set(labelled) - set(subjects))
    if unknown:
        raise ValueError(f"labelled subjects not in the pool: {unknown}")
    backbone = backbone.eval().to(device)
    pixels = [
        subject_pixels(
            backbone, volumes_by_subject[s], seed=seed, device=device, loader=loader, centre_fraction=centre_fraction
        )
        for s in subjects
    ]
    sample = np.concatenate([p[::8] for p in pixels])  # every 8th pixel of every subject for the codebook
    shares = cluster_shares(pixels, kmeans(sample, min(codebook_size, len(sample)), seed=seed))
    distances = hellinger_distances(shares)
    fixed = [subjects.index(s) for s in labelled]
    chosen = k_medoids(distances, k, fixed=fixed)
    return [subjects[i] for i in chosen], {"subjects": subjects, "shares": shares, "distances": distances}


def choose_from_entries(
    entries: Sequence[Mapping[str, Any]],
    backbone_path: str | os.PathLike,
    k: int,
    labelled: Sequence[str] = (),
    seed: int = 0,
    device: str | torch.device = "cpu",
    centre_fraction: float = 1.0,
) -> tuple[list[str], dict[str, np.ndarray | list[str]]]:
    """:func:`choose_subjects` over datalist ``entries`` (their images only, grouped by ``subject``), with the
    backbone of ``backbone_path``; :func:`pix2rep_bundle.data.datasets.choose_from_datalist` reads the entries of a
    datalist's ``labeled`` pool."""
    from pix2rep_bundle.networks import backbone_network

    volumes: dict[str, list[str]] = {}
    for entry in entries:
        volumes.setdefault(str(entry["subject"]), []).append(entry["image"])
    return choose_subjects(
        backbone_network(os.fspath(backbone_path)),
        volumes,
        k,
        labelled=labelled,
        seed=seed,
        device=device,
        centre_fraction=centre_fraction,
    )


def prepared_image_loader(spacing: Any, image_size: Any):
    """``loader(path)`` -> the (H, W, S) prepared image of a raw 3D volume file (the inference preparation)."""
    from pix2rep_bundle.data.preprocessing import volume_preprocessing

    prepare = volume_preprocessing(["image"], spacing, image_size)

    def loader(path: str) -> torch.Tensor:
        return torch.as_tensor(np.asarray(prepare({"image": path})["image"][0]), dtype=torch.float32)

    return loader


def propose_next_study(
    bundle_path: str | os.PathLike, unlabelled: dict[str, str], labelled: dict[str, str], device: str = "cpu"
) -> str | None:
    """The id of the study (of ``unlabelled``, ids to image files) to annotate after those of ``labelled``, by the
    criterion of ``train.yaml --label_selection representative`` with the bundle's defaults."""
    if not unlabelled:
        return None
    from pix2rep_bundle.networks import backbone_network

    settings = bundle_settings(bundle_path)
    backbone = backbone_network(settings["pretrained_ckpt"])
    volumes = {study: [path] for study, path in {**unlabelled, **labelled}.items()}
    chosen, _ = choose_subjects(
        backbone,
        volumes,
        1,
        labelled=sorted(labelled),
        device=device,
        loader=prepared_image_loader(settings["spacing"], settings["image_size"]),
        centre_fraction=float(settings["selection_centre_fraction"]),
    )
    return chosen[0]
