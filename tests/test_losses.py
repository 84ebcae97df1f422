"""Dense Pix2Rep losses: minimal for aligned features, masked pixels never count, float32, reference values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss

from pix2rep_bundle.geometry import Alignment, alignment_from_maps
from pix2rep_bundle.losses import Pix2RepBarlowTwinsLoss, Pix2RepLoss, aligned_rows, nt_xent, valid_positions

B, D, H, W = 2, 8, 12, 12
SHIFT = 3  # view 2 shows the source shifted by SHIFT columns; view 1 is the source


def identity_alignment(b: int = B, h: int = H, w: int = W) -> Alignment:
    maps = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
    return alignment_from_maps(maps, maps, (h, w), (h, w))


def shifted_alignment() -> Alignment:
    """View-1 column j lies at view-2 column j - SHIFT: the first SHIFT columns of view 1 are invalid."""
    to_2 = torch.eye(3, dtype=torch.float64)
    to_2[1, 2] = -SHIFT
    return alignment_from_maps(to_2.expand(B, 3, 3), torch.eye(3, dtype=torch.float64).expand(B, 3, 3), (H, W), (H, W))


def shifted_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of view 1 and view 2 under the shifted alignment, equal at corresponding pixels."""
    torch.manual_seed(seed)
    features_1 = torch.randn(B, D, H, W)
    features_2 = torch.randn(B, D, H, W)
    features_2[..., : W - SHIFT] = features_1[..., SHIFT:]
    return features_1, features_2


LOSSES = {
    "infonce": lambda: Pix2RepLoss(num_samples=64, temperature=0.53),
    "infonce_per_image": lambda: Pix2RepLoss(num_samples=32, samples_per_image=True),
    "barlow": lambda: Pix2RepBarlowTwinsLoss(lambd=5e-3),
    "barlow_subsampled": lambda: Pix2RepBarlowTwinsLoss(max_samples=100),
}


def evaluate(name: str, features_1, features_2, alignment, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return LOSSES[name]()(features_1, features_2, alignment)


@pytest.mark.parametrize("name", list(LOSSES))
def test_aligned_identical_features_beat_shuffled(name):
    features_1, features_2 = shifted_features()
    alignment = shifted_alignment()
    aligned = evaluate(name, features_1, features_2, alignment)
    perm = torch.randperm(H * W, generator=torch.Generator().manual_seed(1))
    shuffled_2 = features_2.flatten(2)[..., perm].reshape(B, D, H, W)
    shuffled = evaluate(name, features_1, shuffled_2, alignment)
    assert aligned < shuffled - 0.1


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_reach_both_views(name):
    features_1, features_2 = (f.requires_grad_() for f in shifted_features())
    evaluate(name, features_1, features_2 + 0.1 * torch.randn_like(features_2), shifted_alignment()).backward()
    assert features_1.grad.abs().sum() > 0 and features_2.grad.abs().sum() > 0
    assert torch.isfinite(features_1.grad).all() and torch.isfinite(features_2.grad).all()
    assert features_1.grad[..., :SHIFT].abs().sum() == 0  # masked-out view-1 pixels get no gradient


@pytest.mark.parametrize("name", list(LOSSES))
def test_masked_out_pixels_never_contribute(name):
    features_1, features_2 = shifted_features()
    alignment = shifted_alignment()
    reference = evaluate(name, features_1, features_2, alignment)
    changed_1, changed_2 = features_1.clone(), features_2.clone()
    changed_1[..., :SHIFT] = 100 * torch.randn(B, D, H, SHIFT)  # view-1 pixels with mask 0
    changed_2[..., W - SHIFT :] = 100 * torch.randn(B, D, H, SHIFT)  # view-2 pixels no valid view-1 pixel reads
    changed = evaluate(name, changed_1, changed_2, alignment)
    assert torch.allclose(changed, reference, rtol=0, atol=1e-5)
    changed_1[..., SHIFT:] += torch.randn(B, D, H, W - SHIFT)  # sanity: changing valid pixels does change the loss
    assert not torch.allclose(evaluate(name, changed_1, changed_2, alignment), reference)


@pytest.mark.parametrize("name", list(LOSSES))
def test_nearly_empty_and_empty_masks(name):
    features_1, features_2 = shifted_features()
    features_1.requires_grad_()
    mask = torch.zeros(B, 1, H, W)
    mask[0, 0, 4, 5:8] = 1.0  # 3 valid pixels
    nearly_empty = Alignment(identity_alignment().grid, mask)
    loss = evaluate(name, features_1, features_2, nearly_empty)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features_1.grad).all()
    with pytest.raises(ValueError, match="do not overlap"):
        evaluate(name, features_1, features_2, Alignment(nearly_empty.grid, torch.zeros_like(mask)))


@pytest.mark.parametrize("name", list(LOSSES))
def test_float32_under_bf16_autocast(name):
    features_1, features_2 = (f.bfloat16() for f in shifted_features())
    features_2 = features_2 + 0.3 * torch.randn_like(features_2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = evaluate(name, features_1, features_2, shifted_alignment())
    upcast = evaluate(name, features_1.float(), features_2.float(), shifted_alignment())
    assert under_autocast.dtype == torch.float32
    assert torch.allclose(under_autocast, upcast, rtol=1e-6, atol=1e-6)


def reference_nt_xent(rows_1: torch.Tensor, rows_2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent written out anchor by anchor (small inputs only)."""
    z = [F.normalize(r, dim=0) for r in torch.cat([rows_1, rows_2])]
    n = rows_1.shape[0]
    total = 0.0
    for a in range(2 * n):
        positive = (a + n) % (2 * n)
        similarities = {k: torch.dot(z[a], z[k]) / temperature for k in range(2 * n) if k != a}
        total = total - torch.log(torch.exp(similarities[positive]) / sum(torch.exp(s) for s in similarities.values()))
    return total / (2 * n)


def test_infonce_matches_references():
    torch.manual_seed(0)
    rows_1, rows_2 = torch.randn(10, 5, dtype=torch.float64), torch.randn(10, 5, dtype=torch.float64)
    expected = reference_nt_xent(rows_1, rows_2, 0.53)
    assert torch.allclose(nt_xent(rows_1, rows_2, 0.53), expected, atol=1e-10)
    assert torch.allclose(ContrastiveLoss(temperature=0.53)(rows_1, rows_2), expected, atol=1e-10)  # same semantics

    # the module: all pixels drawn (num_samples >= valid pixels), identity alignment -> rows are the pixels
    features_1, features_2 = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    loss = Pix2RepLoss(num_samples=1000, temperature=0.53)(features_1, features_2, identity_alignment(2, 3, 4))
    pixels = lambda f: f.permute(0, 2, 3, 1).reshape(-1, 5).double()  # noqa: E731
    assert torch.allclose(loss.double(), reference_nt_xent(pixels(features_1), pixels(features_2), 0.53), atol=1e-5)


def test_sampling_counts_and_uniqueness():
    mask = torch.ones(3, 1, 10, 10)
    mask[1] = 0
    mask[2, 0, :2, :3] = 0
    torch.manual_seed(0)
    batch = valid_positions(mask, 50)
    assert batch.numel() == 50 and batch.unique().numel() == 50 and (mask.flatten()[batch] == 1).all()
    per_image = valid_positions(mask, 40, per_image=True)
    images = per_image // 100
    assert torch.equal(torch.bincount(images, minlength=3), torch.tensor([40, 0, 40]))
    assert (mask.flatten()[per_image] == 1).all() and per_image.unique().numel() == 80
    assert valid_positions(mask, None).numel() == int(mask.sum())
    assert valid_positions(mask, 10_000).numel() == int(mask.sum())  # fewer valid than asked: all of them


def test_rows_read_view_2_at_the_aligned_location():
    features_1, features_2 = shifted_features()
    rows_1, rows_2 = aligned_rows(features_1, features_2, shifted_alignment())
    assert rows_1.shape == (B * H * (W - SHIFT), D)
    assert torch.allclose(rows_1, rows_2, atol=1e-5)


def test_barlow_twins_value_matches_the_formula():
    """Many pixels: MONAI's standardisation (unbiased std) is the formula up to O(1/N)."""
    torch.manual_seed(0)
    features_1 = torch.randn(4, 6, 32, 32)
    features_2 = 0.8 * features_1 + 0.6 * torch.randn(4, 6, 32, 32)
    loss = Pix2RepBarlowTwinsLoss(lambd=5e-3)(features_1, features_2, identity_alignment(4, 32, 32))
    x = features_1.permute(0, 2, 3, 1).reshape(-1, 6)
    y = features_2.permute(0, 2, 3, 1).reshape(-1, 6)
    x, y = (x - x.mean(0)) / x.std(0, unbiased=False), (y - y.mean(0)) / y.std(0, unbiased=False)
    c = x.t() @ y / x.shape[0]
    off_diagonal = c - torch.diag(torch.diag(c))
    expected = ((1 - torch.diag(c)) ** 2).sum() + 5e-3 * (off_diagonal**2).sum()
    assert float(loss) == pytest.approx(float(expected), rel=5e-3)


def test_alignment_must_fit_the_features():
    features = torch.randn(B, D, H // 2, W // 2)
    with pytest.raises(ValueError, match="feature_shape"):
        Pix2RepLoss()(features, features, identity_alignment())
    with pytest.raises(ValueError):
        Pix2RepLoss(num_samples=0)


def _gathered_loss_worker(
    rank: int, init_file: str, rows_1: torch.Tensor, rows_2: torch.Tensor, sizes: list, out_dir: str
) -> None:
    """One of two gloo processes holding ``sizes[rank]`` of the rows: NT-Xent on the gathered rows and grads."""
    import torch.distributed as dist

    from pix2rep_bundle.losses import gather_rows

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    start = sum(sizes[:rank])
    mine_1 = rows_1[start : start + sizes[rank]].clone().requires_grad_(True)
    mine_2 = rows_2[start : start + sizes[rank]].clone().requires_grad_(True)
    loss = nt_xent(gather_rows(mine_1), gather_rows(mine_2), 0.5)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad_1": mine_1.grad, "grad_2": mine_2.grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gathered_negatives_give_the_loss_and_gradient_of_one_process_with_all_rows(tmp_path):
    """Two processes with 3 and 5 rows: each computes the loss of all 8 rows, and each one's row gradients,
    averaged over the processes as DDP does with parameter gradients, are those of the single-process loss."""
    torch.manual_seed(0)
    rows_1, rows_2 = torch.randn(8, 6), torch.randn(8, 6)
    sizes = [3, 5]
    torch.multiprocessing.spawn(
        _gathered_loss_worker, args=(str(tmp_path / "init"), rows_1, rows_2, sizes, str(tmp_path)), nprocs=2, join=True
    )
    full_1, full_2 = rows_1.clone().requires_grad_(True), rows_2.clone().requires_grad_(True)
    expected = nt_xent(full_1, full_2, 0.5)
    expected.backward()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for rank, result in enumerate(results):
        assert torch.allclose(result["loss"], expected.detach(), atol=1e-6)
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        assert torch.allclose(result["grad_1"] / 2, full_1.grad[rows], atol=1e-6)
        assert torch.allclose(result["grad_2"] / 2, full_2.grad[rows], atol=1e-6)
