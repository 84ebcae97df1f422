"""Rendering a phantom subject: torso, heart (signed distances with a partial-volume ramp, so labels and image
agree exactly), bias field, blur and Rician noise; :func:`make_subject` draws and renders one subject."""

from __future__ import annotations

import math

import numpy as np

from pix2rep_bundle.data.phantom.anatomy import (
    _F32,
    _GROUP_PARAMS,
    LABELS,
    N_ANGLES,
    PhantomSubject,
    _Acquisition,
    _alpha,
    _angles,
    _blur_plane,
    _boundaries,
    _draw_acquisition,
    _draw_heart,
    _draw_scene,
    _draw_slices,
    _harmonics,
    _Heart,
    _heart_frame,
    _lookup,
    _paint,
    _plane_coords,
    _Scene,
    _smooth_field,
    _to_frame,
    _wrap,
    group_of,
)

# --------------------------------------------------------------------------------------------- rendering


def _render_torso(rng: np.random.Generator, acq: _Acquisition, scene: _Scene) -> np.ndarray:
    """Noise-free torso around the heart (blood = 1): body, fat, muscle, lungs, liver, spine, aorta, blobs."""
    t = scene.tissue
    px, py = _plane_coords(acq)
    u, v = _to_frame(px, py, scene.body_centre, scene.body_angle)
    h = acq.heights.astype(_F32)[None, None, :]
    w = acq.spacing[0]
    shape = acq.shape

    def tex(cell_mm: float, amp: float) -> np.ndarray:
        return 1.0 + _F32(amp) * _smooth_field(rng, shape, cell_mm / w, 30.0 / acq.spacing[2])

    img = np.zeros(shape, _F32)

    a_b, b_b = rng.uniform(165, 215), rng.uniform(115, 150)
    theta = np.arctan2(v, u)
    r = np.sqrt(u**2 + v**2)
    theta_idx = np.rint((theta + np.pi) * N_ANGLES / (2 * np.pi)).astype(np.intp) % N_ANGLES
    ang = _angles()
    ell = a_b * b_b / np.sqrt((b_b * np.cos(ang)) ** 2 + (a_b * np.sin(ang)) ** 2)
    r_body = (ell * (1 + _harmonics(rng, 0.06, 2, 5)))[theta_idx[..., 0]][..., None].astype(_F32)
    r_body = r_body * (1 + _F32(rng.uniform(-0.001, 0.001)) * h)
    fat_t = (np.clip(_harmonics(rng, 1.0, 1, 4) * 10 + rng.uniform(8, 20), 3, None))[theta_idx[..., 0]][..., None]
    muscle_t = (np.clip(_harmonics(rng, 1.0, 1, 4) * 6 + rng.uniform(8, 16), 3, None))[theta_idx[..., 0]][..., None]
    d_body = r - r_body
    _paint(img, _alpha(d_body, w), t["fat"] * tex(8, 0.08))
    _paint(img, _alpha(d_body + fat_t, w), t["muscle"] * tex(6, 0.15))
    inner = _alpha(d_body + fat_t + muscle_t, w)
    _paint(img, inner, t["soft"] * tex(12, 0.25))
    _paint_ellipse(
        img,
        u,
        v,
        (-0.3 * a_b, 0.55 * b_b - 0.35 * h),
        (0.5 * a_b, 0.45 * b_b + 0.2 * h),
        rng.uniform(-0.4, 0.4),
        t["liver"] * tex(15, 0.1),
        w,
        inner,
    )
    _paint_ellipse(
        img,
        u,
        v,
        (rng.uniform(0.15, 0.35) * a_b, 0.45 * b_b - 0.2 * h),
        (rng.uniform(30, 50), rng.uniform(20, 35)),
        rng.uniform(-1, 1),
        t["stomach"] * tex(10, 0.2),
        w,
        inner,
    )
    lung_tex = _F32(t["lung"]) * (1 + 5 * np.maximum(_smooth_field(rng, shape, 3.5 / w) - 1.4, 0))  # vessels
    for side in (-1, 1):
        centre = (side * rng.uniform(0.45, 0.6) * a_b, rng.uniform(-0.15, 0.1) * b_b + 0.1 * h)
        axes = (rng.uniform(0.25, 0.35) * a_b - 0.1 * h, rng.uniform(0.45, 0.6) * b_b - 0.15 * h)
        _paint_ellipse(img, u, v, centre, axes, rng.uniform(-0.5, 0.5), lung_tex, w, inner)
    spine_c = (rng.uniform(-10, 10), 0.8 * b_b)
    _paint_ellipse(img, u, v, spine_c, (rng.uniform(35, 45), rng.uniform(25, 35)), 0.0, t["muscle"], w, inner)
    _paint_ellipse(
        img, u, v, spine_c, (rng.uniform(14, 19), rng.uniform(12, 17)), 0.0, t["spine"] * tex(5, 0.2), w, inner
    )
    _paint_ellipse(
        img,
        u,
        v,
        (spine_c[0] + rng.uniform(15, 30), spine_c[1] - rng.uniform(22, 32)),
        (rng.uniform(9, 13),) * 2,
        0.0,
        t["aorta"],
        w,
        inner,
    )
    hc = scene.heart_offset
    med = rng.uniform(60, 75)
    _paint_ellipse(
        img, u, v, (hc[0] - 10, hc[1]), (med, med * 0.85), rng.uniform(-1, 1), t["soft"] * tex(10, 0.3), 12.0, inner
    )  # mediastinum, soft-edged
    _paint_blobs(rng, img, u, v, h, (a_b, b_b), hc, med, w, inner)
    return img


def _paint_ellipse(
    img: np.ndarray, u: np.ndarray, v: np.ndarray, centre, axes, angle: float, value, w: float, mask: np.ndarray
) -> None:
    """Paint a (possibly slice-dependent) rotated ellipse, restricted by ``mask``, inside its bounding box."""
    box = _box(u, v, centre, max(float(np.max(axes[0])), float(np.max(axes[1]))) + 2 * w)
    if box is None:
        return
    img, u, v, mask = img[box], u[box], v[box], mask[box]
    if isinstance(value, np.ndarray) and value.ndim == 3:
        value = value[box]
    c, s = _F32(math.cos(angle)), _F32(math.sin(angle))
    du, dv = u - np.asarray(centre[0], _F32), v - np.asarray(centre[1], _F32)
    a, b = c * du + s * dv, -s * du + c * dv
    ax0 = np.maximum(np.asarray(axes[0], _F32), 1.0)
    ax1 = np.maximum(np.asarray(axes[1], _F32), 1.0)
    q = np.sqrt((a / ax0) ** 2 + (b / ax1) ** 2) + _F32(1e-6)
    r = np.sqrt(a**2 + b**2)
    _paint(img, _alpha(r * (1 - 1 / q), w) * mask, value)


def _box(u: np.ndarray, v: np.ndarray, centre, radius: float) -> tuple[slice, slice] | None:
    """In-plane index box of the voxels within ``radius`` (mm, per axis) of ``centre`` in the (u, v) frame."""
    cu, cv = np.asarray(centre[0]), np.asarray(centre[1])
    near = (
        (u[..., 0] > cu.min() - radius)
        & (u[..., 0] < cu.max() + radius)
        & (v[..., 0] > cv.min() - radius)
        & (v[..., 0] < cv.max() + radius)
    )
    rows, cols = np.flatnonzero(near.any(1)), np.flatnonzero(near.any(0))
    if rows.size == 0 or cols.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _paint_blobs(
    rng: np.random.Generator,
    img: np.ndarray,
    u,
    v,
    h,
    body: tuple[float, float],
    heart: tuple[float, float],
    keep_out: float,
    w: float,
    mask: np.ndarray,
) -> None:
    """A dozen soft blobs (vessels, bowel, fat) of random size and brightness away from the heart."""
    for _ in range(int(rng.integers(8, 16))):
        for _try in range(10):
            cu, cv = rng.uniform(-0.75, 0.75) * body[0], rng.uniform(-0.7, 0.8) * body[1]
            if math.hypot(cu - heart[0], cv - heart[1]) > keep_out + 10:
                break
        ch = rng.uniform(0, 100)
        rad = rng.uniform(3, 14)
        ax_u, ax_v = rad * rng.uniform(0.6, 1.6), rad * rng.uniform(0.6, 1.6)
        axes = (ax_u, ax_v * np.sqrt(np.clip(1 - ((h - ch) / rng.uniform(15, 50)) ** 2, 0, 1)))
        _paint_ellipse(img, u, v, (cu, cv), axes, rng.uniform(0, np.pi), rng.uniform(0.05, 0.95), w, mask)


def _bias_field(rng: np.random.Generator, acq: _Acquisition) -> np.ndarray:
    """Smooth multiplicative coil-sensitivity field (mean about 1)."""
    px, py = _plane_coords(acq)
    fov = acq.shape[0] * acq.spacing[0]
    g = rng.uniform(-0.5, 0.5, 2)
    lin = _F32(g[0] / fov) * px + _F32(g[1] / fov) * py
    smooth = _F32(rng.uniform(0.1, 0.25)) * _smooth_field(rng, acq.shape, 80.0 / acq.spacing[0], 60.0 / acq.spacing[2])
    return np.exp(lin + smooth).astype(_F32)


def _heart_crop(acq: _Acquisition, heart: _Heart, centre: tuple[float, float]) -> tuple[slice, slice]:
    """Index box around the heart that holds every heart structure in every frame."""
    reach = heart.r_endo * 1.3 + heart.wall * 2.0 + heart.rv_depth * 1.5 + heart.rv_wall + float(heart.fat.max()) + 20
    reach += max(abs(heart.apex_drift[0]), abs(heart.apex_drift[1]))
    s = acq.spacing[0]
    out = []
    for axis in (0, 1):
        n = acq.shape[axis]
        c = centre[axis] / s + (n - 1) / 2
        out.append(slice(int(max(0, math.floor(c - reach / s))), int(min(n, math.ceil(c + reach / s) + 1))))
    return out[0], out[1]


def _render_heart(
    img: np.ndarray,
    acq: _Acquisition,
    scene: _Scene,
    heart: _Heart,
    state: float,
    crop: tuple[slice, slice],
    blood_tex: np.ndarray,
) -> np.ndarray:
    """Paint the heart at cycle ``state`` into ``img`` (in place) and return the label volume."""
    centre, angle = _heart_frame(scene)
    px, py = _plane_coords(acq)
    a, b = _to_frame(px[crop[0]], py[:, crop[1]], centre, angle)
    rel = acq.heights.astype(_F32) / _F32(heart.len_epi)
    a = a - _F32(heart.apex_drift[0]) * rel**2
    b = b - _F32(heart.apex_drift[1]) * rel**2
    r = np.sqrt(a**2 + b**2)
    theta_idx = np.rint((np.arctan2(b, a) + np.pi) * (N_ANGLES / (2 * np.pi))).astype(np.intp) % N_ANGLES
    tab = _boundaries(heart, acq.heights, state)
    endo, epi, rv, outer, fat = (_lookup(tab[k], theta_idx) for k in ("endo", "epi", "rv", "outer", "fat"))
    w = acq.spacing[0]
    t = scene.tissue
    sub = img[crop[0], crop[1]]
    _paint(sub, _alpha(r - fat, w), t["fat"])
    _paint(sub, _alpha(r - outer, w), t["myo"])
    d_rv = np.maximum(epi - r, r - rv)
    _paint(sub, _alpha(d_rv, w), t["rv_blood"] * blood_tex)
    _paint(sub, _alpha(r - endo, w), t["lv_blood"] * blood_tex)
    _paint_papillary(sub, a, b, heart, tab["endo"], acq.heights, state, w, t["myo"])
    img[crop[0], crop[1]] = sub
    labels = np.zeros(acq.shape, np.uint8)
    lab = np.zeros(sub.shape, np.uint8)
    lab[d_rv < 0] = LABELS["RV"]
    lab[r < epi] = LABELS["MYO"]
    lab[r < endo] = LABELS["LV"]
    labels[crop[0], crop[1]] = lab
    return labels


def _paint_papillary(
    sub: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    heart: _Heart,
    endo_tab: np.ndarray,
    heights: np.ndarray,
    state: float,
    w: float,
    value: float,
) -> None:
    """Two dark papillary muscles inside the mid-ventricular LV cavity (labelled LV, as in ACDC)."""
    len_endo = heart.len_epi - heart.apex_wall
    t = heights / len_endo
    size = heart.papillary_radius * np.clip(np.minimum((t - 0.15) / 0.15, (0.8 - t) / 0.15), 0, 1) * (1 + 0.3 * state)
    for ang in heart.papillary_angles:
        k = int(np.rint((_wrap(ang) + np.pi) * N_ANGLES / (2 * np.pi))) % N_ANGLES
        dist = endo_tab[:, k] * 0.72
        ca = (dist * math.cos(ang)).astype(_F32)[None, None, :]
        cb = (dist * math.sin(ang)).astype(_F32)[None, None, :]
        d = np.sqrt((a - ca) ** 2 + (b - cb) ** 2) - size.astype(_F32)[None, None, :]
        _paint(sub, _alpha(d, w) * (size > 0.5)[None, None, :], value)


def _acquire(clean: np.ndarray, scene: _Scene, bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, bias, Rician noise and integer intensity scale (values as int16 would store them)."""
    img = _blur_plane(clean, scene.blur) * bias
    sigma = _F32(scene.noise)
    re = img + sigma * rng.standard_normal(img.shape, dtype=_F32)
    im = sigma * rng.standard_normal(img.shape, dtype=_F32)
    out = np.sqrt(re * re + im * im) * _F32(scene.scale)
    return np.clip(np.rint(out), 0, 32767).astype(_F32)


def cycle_states(num_frames: int, ed_frame: int, es_frame: int) -> np.ndarray:
    """Contraction state per frame (index 0 = frame 1): 0 at ED, 1 at ES, rapid filling then diastasis."""
    f = (np.arange(num_frames) - (ed_frame - 1)) % num_frames
    sys_len = (es_frame - ed_frame) % num_frames
    dia_len = num_frames - sys_len
    systole = 0.5 * (1 - np.cos(np.pi * np.clip(f / max(sys_len, 1), 0, 1)))
    filling = 0.5 * (1 + np.cos(np.pi * np.clip((f - sys_len) / max(0.6 * dia_len, 1), 0, 1)))
    return np.where(f <= sys_len, systole, filling)


# --------------------------------------------------------------------------------------------- public API


def make_subject(subject_id: int, seed: int = 0, with_cine: bool = False) -> PhantomSubject:
    """Generate one subject, deterministic from (seed, subject_id); ED and ES frames always, cine optionally."""
    if subject_id < 1:
        raise ValueError(f"subject_id must be >= 1, got {subject_id}")
    rng = np.random.default_rng([int(seed), int(subject_id)])
    group = group_of(subject_id)
    nz, sz, heights, length = _draw_slices(rng, float(rng.uniform(*_GROUP_PARAMS[group]["length"])))
    heart = _draw_heart(rng, group, length, heights)
    acq = _draw_acquisition(rng, nz, sz, heights)
    scene = _draw_scene(rng, acq)
    num_frames = int(rng.integers(15, 36))
    es_frame = 1 + int(round(num_frames * rng.uniform(0.3, 0.45)))
    height, weight = round(float(rng.normal(171, 9)), 1), round(float(np.clip(rng.normal(78, 14), 45, 140)), 1)
    torso = _render_torso(rng, acq, scene)
    bias = _bias_field(rng, acq)
    crop = _heart_crop(acq, heart, _heart_frame(scene)[0])
    crop_shape = (crop[0].stop - crop[0].start, crop[1].stop - crop[1].start, nz)
    blood_tex = 1 + _F32(0.06) * _smooth_field(rng, crop_shape, 6.0)  # mild flow-related inhomogeneity
    states = cycle_states(num_frames, 1, es_frame)
    frames = range(1, num_frames + 1) if with_cine else (1, es_frame)
    images, labels = {}, {}
    for frame in frames:
        clean = torso.copy()
        labels[frame] = _render_heart(clean, acq, scene, heart, float(states[frame - 1]), crop, blood_tex)
        images[frame] = _acquire(clean, scene, bias, np.random.default_rng([int(seed), int(subject_id), 1, frame]))
    cine = np.stack([images[f] for f in frames], axis=-1) if with_cine else None
    keep = (1, es_frame)
    return PhantomSubject(
        subject_id=int(subject_id),
        group=group,
        spacing=acq.spacing,
        ed_frame=1,
        es_frame=es_frame,
        num_frames=num_frames,
        height=height,
        weight=weight,
        images={f: images[f] for f in keep},
        labels={f: labels[f] for f in keep},
        cine=cine,
        origin=acq.origin,
    )
