"""SSD300 default boxes from an anchor spec (the model config's ``anchors``; presets hold the references' values).

Every spec gives float32 [8732, 4] normalised [ymin, xmin, ymax, xmax] boxes flattened in (y, x, anchor) order
(location-major, anchor fastest; levels concatenated from 38x38 down to 1x1). This is the package's head layout.
MLPerf's own order is (anchor, y, x); ``order_permutation`` maps between the two.

Per cell, with s_k = scales[k] and s'_k = sqrt(scales[k] * scales[k+1]), the (w, h) pairs are
(s_k, s_k), (s'_k, s'_k), then for each aspect ratio a: (s_k*sqrt(a), s_k/sqrt(a)), (s_k/sqrt(a), s_k*sqrt(a)).
Cell (i, j) has centre cx = (j + 0.5) / f_k, cy = (i + 0.5) / f_k with f_k = image_size / step_k.

Clipping happens on (cx, cy, w, h) *before* conversion to corners, as in the references: ``clip="all"`` clamps
all four to [0, 1] (MLPerf, ssd.pytorch), ``clip="wh"`` only w and h (torchvision). The corners may therefore
lie outside [0, 1].
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
    """Default-box layout of an SSD model (sizes normalised to the image side)."""

    feature_sizes: tuple[int, ...]
    steps: tuple[int, ...]
    scales: tuple[float, ...]  # len(levels) + 1: s_k for every level plus the extra one used by s'_last
    aspect_ratios: tuple[tuple[int, ...], ...]
    clip: str  # "all" (cx, cy, w, h) or "wh" (w, h only)
    image_size: int = 300

    def __post_init__(self):
        n = len(self.feature_sizes)
        if not (len(self.steps) == len(self.aspect_ratios) == n and len(self.scales) == n + 1):
            raise ValueError(
                f"AnchorSpec: need equal numbers of feature_sizes ({n}), steps ({len(self.steps)}), "
                f"aspect_ratios ({len(self.aspect_ratios)}) and len(scales) == levels + 1 (got {len(self.scales)})")
        if self.clip not in ("all", "wh"):
            raise ValueError(f"AnchorSpec: clip must be 'all' or 'wh', got {self.clip!r}")

    @property
    def anchors_per_cell(self) -> tuple[int, ...]:
        return tuple(2 + 2 * len(r) for r in self.aspect_ratios)

    @property
    def num_anchors(self) -> int:
        return sum(f * f * a for f, a in zip(self.feature_sizes, self.anchors_per_cell))

    def level_wh(self, level: int) -> np.ndarray:
        """(w, h) pairs of one level in per-cell order, before clipping: float64 [anchors_per_cell, 2]."""
        s, s_next = self.scales[level], self.scales[level + 1]
        pairs = [(s, s), (math.sqrt(s * s_next),) * 2]
        for ratio in self.aspect_ratios[level]:
            r = math.sqrt(ratio)
            pairs += [(s * r, s / r), (s / r, s * r)]
        return np.asarray(pairs, dtype=np.float64)


def _check_spec(spec) -> AnchorSpec:
    if not isinstance(spec, AnchorSpec):
        raise ValueError(f"expected an AnchorSpec (a model config's anchors), got {spec!r}")
    return spec


def _level_cxcywh(spec: AnchorSpec, level: int) -> np.ndarray:
    """One level's boxes as float64 [f*f*A, 4] (cx, cy, w, h), order (y, x, anchor), clipped per spec."""
    f = spec.feature_sizes[level]
    fk = spec.image_size / spec.steps[level]
    centres = (np.arange(f, dtype=np.float64) + 0.5) / fk
    cy, cx = np.meshgrid(centres, centres, indexing="ij")  # [f, f] each
    wh = spec.level_wh(level)  # [A, 2]
    num = wh.shape[0]
    out = np.empty((f, f, num, 4), dtype=np.float64)
    out[..., 0] = cx[:, :, None]
    out[..., 1] = cy[:, :, None]
    out[..., 2:] = wh[None, None, :, :]
    out = out.reshape(f * f * num, 4)  # (y, x, anchor) flattened
    if spec.clip == "all":
        out = np.clip(out, 0.0, 1.0)
    else:
        out[:, 2:] = np.clip(out[:, 2:], 0.0, 1.0)
    return out


def ssd_default_boxes(spec: AnchorSpec) -> np.ndarray:
    """Default boxes of an anchor spec: float32 [N, 4] normalised yxyx, order (y, x, anchor)."""
    spec = _check_spec(spec)
    cxcywh = np.concatenate([_level_cxcywh(spec, k) for k in range(len(spec.feature_sizes))], axis=0)
    cx, cy, w, h = cxcywh.T
    boxes = np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
    return boxes.astype(np.float32)


def order_permutation(spec: AnchorSpec, source: str = "ayx", target: str = "yxa") -> np.ndarray:
    """Index array ``p`` [N] with ``x_target = x_source[p]`` along the anchor axis.

    Orders: "yxa" = (y, x, anchor), the package's; "ayx" = (anchor, y, x), MLPerf REF/TPU. Levels stay concatenated
    in the same order in both. ``order_permutation(s, "yxa", "ayx")`` is the inverse permutation.
    """
    for name, order in (("source", source), ("target", target)):
        if order not in ("ayx", "yxa"):
            raise ValueError(f"order_permutation: {name} must be 'ayx' or 'yxa', got {order!r}")
    spec = _check_spec(spec)
    parts, offset = [], 0
    for f, a in zip(spec.feature_sizes, spec.anchors_per_cell):
        y, x, k = np.meshgrid(np.arange(f), np.arange(f), np.arange(a), indexing="ij")  # each [f, f, a]
        # Position of the target-ordered element (y, x, k) inside the source-ordered level.
        if source == target:
            idx = np.arange(f * f * a)
        elif source == "ayx":  # target yxa: walk (y, x, a), read index a*f*f + y*f + x
            idx = (k * f * f + y * f + x).reshape(-1)
        else:  # source yxa, target ayx: walk (a, y, x), read index (y*f + x)*a + k
            idx = ((y * f + x) * a + k).transpose(2, 0, 1).reshape(-1)
        parts.append(idx + offset)
        offset += f * f * a
    return np.concatenate(parts).astype(np.int64)
