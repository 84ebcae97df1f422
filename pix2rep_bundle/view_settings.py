"""The parameters of Pix2Rep's two views, defined once: :class:`ViewSettings`, which both view paths consume (the
per-slice MONAI pipeline :func:`pix2rep_bundle.transforms.paired_views` and the batched
:class:`pix2rep_bundle.batch_views.BatchPairedViews`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pix2rep_bundle.settings import as_bool


def check_scale_range(scale_range: Sequence[float] | None) -> None:
    """ValueError unless ``scale_range`` is None or ``0 < s_min <= s_max``."""
    if scale_range is None:
        return
    if len(scale_range) != 2 or not 0.0 < float(scale_range[0]) <= float(scale_range[1]):
        raise ValueError(f"scale_range must be (s_min, s_max) with 0 < s_min <= s_max, got {scale_range}")


def checked_view_size(view_size: Any) -> tuple[int, int] | None:
    """``view_size`` as ``(h, w)`` (an int ``n`` is ``(n, n)``; None, the source slice's size, stays None);
    ValueError unless two whole numbers >= 8."""
    if view_size is None:
        return None
    sizes = [view_size, view_size] if isinstance(view_size, int) else view_size
    ok = isinstance(sizes, (list, tuple)) and len(sizes) == 2
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 8 for n in sizes)
    if not ok:
        raise ValueError(
            f"view_settings view_size must be None, n or [h, w] with whole numbers >= 8, got {view_size!r}"
        )
    values = [int(n) for n in sizes]
    return (values[0], values[1])


@dataclass(frozen=True)
class ViewSettings:
    """How the two views of a slice are drawn; the defaults are the reference settings (see ``paired_views`` for
    the meaning of each). Spatial: ``rotate_degrees``, ``scale_range`` (None: no zoom-crop), ``zoom_offset``,
    ``translate_fraction``, ``flip_prob``, ``spatial_mode``, ``view_size``. Intensity: ``invert_prob``, ``gamma_prob``,
    ``log_gamma_range``, ``contrast_prob``, ``contrast_range``, ``brightness_range``, ``bias_field_prob``,
    ``bias_field_coeff``, ``blur_prob``, ``blur_sigma``, ``noise_prob``, ``noise_std``."""

    rotate_degrees: float = 90.0
    scale_range: tuple[float, float] | None = (0.33, 0.95)
    zoom_offset: bool = True
    translate_fraction: float = 0.0
    flip_prob: float = 0.5
    invert_prob: float = 0.35
    gamma_prob: float = 0.9
    log_gamma_range: float = 0.05
    contrast_prob: float = 0.0
    contrast_range: float = 0.1
    brightness_range: float = 0.1
    bias_field_prob: float = 0.75
    bias_field_coeff: float = 0.9
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 1.3)
    noise_prob: float = 0.3
    noise_std: float = 0.5
    spatial_mode: str = "bilinear"
    view_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_scale_range(self.scale_range)
        if self.scale_range is not None:
            object.__setattr__(self, "scale_range", (float(self.scale_range[0]), float(self.scale_range[1])))
        object.__setattr__(self, "blur_sigma", (float(self.blur_sigma[0]), float(self.blur_sigma[1])))
        object.__setattr__(self, "zoom_offset", as_bool(self.zoom_offset, "view_settings zoom_offset"))
        object.__setattr__(self, "view_size", checked_view_size(self.view_size))
        for field in dataclasses.fields(self):
            if field.type == "float":
                object.__setattr__(self, field.name, float(getattr(self, field.name)))

    @classmethod
    def of(cls, settings: ViewSettings | Mapping[str, Any] | None = None, **overrides: Any) -> ViewSettings:
        """``settings`` (a ViewSettings, a dict such as a config's ``view_settings``, or None for the defaults) with
        ``overrides``; ValueError naming any unknown parameter."""
        values = dataclasses.asdict(settings) if isinstance(settings, ViewSettings) else dict(settings or {})
        values.update(overrides)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown view setting(s) {unknown}: choose among {[f.name for f in dataclasses.fields(cls)]}"
            )
        return cls(**values)
