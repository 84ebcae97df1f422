"""Dense Pix2Rep losses over aligned pixels of two views.

Both losses take the projected feature maps of the two views ``(B, D, H, W)`` and the
:class:`~pix2rep_bundle.geometry.Alignment` of the batch (grid and validity mask in the frame of view 1). The
Pix2Rep part is here: which pixels count (the mask), how they are drawn, and reading view 2 at the aligned
locations (bilinear ``grid_sample`` at the drawn points only). The objectives themselves are computed on rows
``(N, D)``: NT-Xent by hand (see :class:`Pix2RepLoss` for why not ``monai.losses.ContrastiveLoss``), Barlow Twins
by ``monai.losses.BarlowTwinsLoss``.

Losses are computed in float32 with autocast disabled, whatever the dtype of the features (bf16 AMP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import BarlowTwinsLoss
from torch import nn

from pix2rep_bundle.geometry import ALIGN_CORNERS, Alignment

_NO_OVERLAP = "the two views do not overlap: the alignment mask has no valid pixel in this batch"


# ------------------------------------------------------------------------------------------ sampling


def _check_inputs(features_1: torch.Tensor, features_2: torch.Tensor, alignment: Alignment) -> None:
    """ValueError unless both feature maps are ``(B, D, H, W)`` on the alignment's ``(B, H, W)`` grid."""
    if features_1.ndim != 4 or features_1.shape != features_2.shape:
        raise ValueError(
            f"expected two (B, D, H, W) feature maps of one shape, got {tuple(features_1.shape)} "
            f"and {tuple(features_2.shape)}"
        )
    b, _, h, w = features_1.shape
    if tuple(alignment.grid.shape) != (b, h, w, 2) or tuple(alignment.mask.shape) != (b, 1, h, w):
        raise ValueError(
            f"alignment (grid {tuple(alignment.grid.shape)}, mask {tuple(alignment.mask.shape)}) does not "
            f"fit features {tuple(features_1.shape)}: compute it with feature_shape=({h}, {w})"
        )


def valid_positions(mask: torch.Tensor, num_samples: int | None = None, per_image: bool = False) -> torch.Tensor:
    """Flat indices into ``(B * H * W)`` of valid pixels (``mask`` ``(B, 1, H, W)`` > 0.5), sorted.

    ``num_samples`` None: all of them. Otherwise a uniform draw without replacement (``torch.rand`` on the mask's
    device, so seeding torch makes it reproducible) of ``num_samples`` from the whole batch, or of
    ``num_samples`` per image when ``per_image`` (fewer where fewer are valid). ValueError when none is valid.
    """
    valid = mask.flatten(1) > 0.5 if per_image else (mask > 0.5).reshape(1, -1)
    count = int(valid.sum())
    if count == 0:
        raise ValueError(_NO_OVERLAP)
    if num_samples is None or (not per_image and num_samples >= count):
        return valid.reshape(-1).nonzero().squeeze(1)
    keys = torch.rand(valid.shape, device=mask.device).masked_fill_(~valid, -1.0)
    k = min(int(num_samples), valid.shape[1])
    top, chosen = keys.topk(k, dim=1, sorted=False)
    offsets = torch.arange(valid.shape[0], device=mask.device)[:, None] * valid.shape[1]
    flat = (chosen + offsets)[top >= 0]
    return flat.sort().values


def _sample_points(features: torch.Tensor, grid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(N, D)``: ``features`` ``(B, D, H, W)`` sampled bilinearly at ``grid`` ``(B, H, W, 2)`` for the sorted flat
    ``positions``, with one ``grid_sample`` of a ``(B, n_max, 1, 2)`` grid (the points grouped by image)."""
    b, h, w = grid.shape[:3]
    image = positions // (h * w)
    counts = torch.bincount(image, minlength=b)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(positions.numel(), device=positions.device) - starts[image]
    points = grid.new_zeros((b, int(counts.max()), 1, 2))
    points[image, slot, 0] = grid.reshape(-1, 2)[positions]
    sampled = F.grid_sample(
        features, points.to(features.dtype), mode="bilinear", padding_mode="zeros", align_corners=ALIGN_CORNERS
    )
    return sampled[image, :, slot, 0]


def _pixels(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(N, D)``: the pixels of ``features`` ``(B, D, H, W)`` at flat ``positions`` into ``(B * H * W)``."""
    b, d, h, w = features.shape
    return features.flatten(2)[positions // (h * w), :, positions % (h * w)]


def aligned_rows(
    features_1: torch.Tensor,
    features_2: torch.Tensor,
    alignment: Alignment,
    num_samples: int | None = None,
    per_image: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 ``(N, D)`` rows of aligned features: view 1 at valid pixels, view 2 at their aligned locations."""
    _check_inputs(features_1, features_2, alignment)
    positions = valid_positions(alignment.mask, num_samples, per_image)
    grid = alignment.grid.to(device=features_1.device, dtype=torch.float32)
    rows_1 = _pixels(features_1.float(), positions)
    rows_2 = _sample_points(features_2.float(), grid, positions)
    return rows_1, rows_2


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` ``(N_r, D)`` of every process of the default ``torch.distributed`` group, concatenated in rank order
    (``rows`` itself without one). Differentiable: ``torch.distributed.nn.functional.all_gather`` sends each
    process the gradients of its own rows from every process's loss; as every process computes the same loss
    on the gathered rows and DDP averages the gradients, the update is that of the one loss over all rows.
    Processes may hold different ``N_r`` (rows are padded to the largest for the exchange)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.int64, device=rows.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device))
    counts = [int(c) for c in counts]
    padded = F.pad(rows, (0, 0, 0, max(counts) - rows.shape[0]))
    return torch.cat([part[:n] for part, n in zip(all_gather(padded), counts)])


# --------------------------------------------------------------------------------------------- losses


def nt_xent(rows_1: torch.Tensor, rows_2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over ``2N`` rows: row ``k`` of view 1 and row ``k`` of view 2 are positives, every other row of
    either view a negative; mean over the ``2N`` anchors of ``-log softmax`` of the positive (self excluded)."""
    n = rows_1.shape[0]
    z = F.normalize(torch.cat([rows_1, rows_2]), dim=1)
    logits = (z @ z.t()) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class Pix2RepLoss(nn.Module):
    """Dense InfoNCE (NT-Xent) between aligned pixels of two views: the Pix2Rep objective.

    ``num_samples`` valid pixel positions (mask of the alignment, view-1 frame) are drawn uniformly without
    replacement, from the whole batch as in the reference implementation (default), or ``num_samples`` per image
    with ``samples_per_image``; all valid positions are used when fewer are valid. View 1 is read at the drawn
    pixels, view 2 bilinearly at the aligned locations. Rows are L2-normalised; each of the ``2N`` vectors has its
    aligned partner as positive and the ``2N - 2`` other vectors of both views as negatives (temperature
    ``temperature``); the loss is the mean over the ``2N`` anchors.

    This is exactly the semantics of ``monai.losses.ContrastiveLoss`` (same negatives, positive in the
    denominator, self excluded, mean over ``2N``; the tests check equality), but that implementation builds a
    ``(2N, 2N, D)`` tensor for the cosine similarities (4 GB at N = 1000, D = 256, and as much again for the
    backward pass); here the similarities are one ``(2N, D) x (D, 2N)`` product and a log-sum-exp.
    Drawing uses the global torch generator of the features' device (``torch.manual_seed`` makes it reproducible).

    ``gather_negatives`` (several processes, ``torch.distributed``): the rows of every process are gathered
    (:func:`gather_rows`) so that each anchor has the ``2 N P - 2`` rows of all ``P`` processes as negatives, as
    one process with the whole batch would; otherwise each process contrasts its own ``2 N`` rows only.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        temperature: float = 0.53,
        samples_per_image: bool = False,
        gather_negatives: bool = False,
    ):
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_samples = int(num_samples)
        self.temperature = float(temperature)
        self.samples_per_image = bool(samples_per_image)
        self.gather_negatives = bool(gather_negatives)

    def forward(self, features_1: torch.Tensor, features_2: torch.Tensor, alignment: Alignment) -> torch.Tensor:
        with torch.autocast(device_type=features_1.device.type, enabled=False):
            rows_1, rows_2 = aligned_rows(features_1, features_2, alignment, self.num_samples, self.samples_per_image)
            if self.gather_negatives:
                rows_1, rows_2 = gather_rows(rows_1), gather_rows(rows_2)
            return nt_xent(rows_1, rows_2, self.temperature)


class Pix2RepBarlowTwinsLoss(nn.Module):
    """Dense Barlow Twins between aligned pixels of two views (Pix2Rep-BT).

    Every valid aligned pixel of the batch is a sample (or ``max_samples`` of them drawn uniformly from the
    batch). The ``(N, D)`` rows of view 1 (at its pixels) and view 2 (bilinearly at the aligned locations) go to
    ``monai.losses.BarlowTwinsLoss``, which standardises each channel over the samples, forms the ``D x D``
    cross-correlation ``C`` and returns ``sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2``. Its only departure from
    the formula is that it standardises with the unbiased std but averages the products over ``N``, so perfectly
    correlated channels reach ``C_ii = (N - 1) / N``: negligible for the thousands of pixels per batch.
    ValueError when fewer than 2 pixels are valid.
    """

    def __init__(self, lambd: float = 5e-3, max_samples: int | None = None):
        super().__init__()
        if max_samples is not None and max_samples < 2:
            raise ValueError(f"max_samples must be None or >= 2, got {max_samples}")
        self.lambd = float(lambd)
        self.max_samples = None if max_samples is None else int(max_samples)
        self.barlow_twins = BarlowTwinsLoss(lambd=self.lambd)

    def forward(self, features_1: torch.Tensor, features_2: torch.Tensor, alignment: Alignment) -> torch.Tensor:
        with torch.autocast(device_type=features_1.device.type, enabled=False):
            rows_1, rows_2 = aligned_rows(features_1, features_2, alignment, self.max_samples)
            if rows_1.shape[0] < 2:
                raise ValueError(
                    "the two views overlap in a single pixel: Barlow Twins needs at least 2 aligned pixels"
                )
            return self.barlow_twins(rows_1, rows_2)
