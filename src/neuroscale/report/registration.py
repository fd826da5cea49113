"""Registration mosaics: the edges of one image drawn over another.

The figure judges an alignment the way the fMRIPrep / sMRIPrep visual reports do (Esteban et al.
2019, Nat Methods 16:111-116; ``niworkflows.viz.utils.plot_registration``): one image is drawn
in grey and the *edges* of the other (contours of its tissue boundaries or of its brain mask)
are drawn over it in colour, on a few slices in each of the three orientations (sagittal,
coronal, axial).  Good alignment puts the contours on the grey image's boundaries everywhere.

Both images must already lie on one voxel grid (resample first, e.g. with
:func:`neuroscale.preproc.registration.resample_to_grid`).  The figure follows
:mod:`neuroscale.report.figures`: a pyplot-free Agg :class:`~matplotlib.figure.Figure` on a black
background, volumes reoriented to RAS+ (:func:`~neuroscale.report.figures.reorient_ras`),
neurological convention (the subject's left on the left); render it with
:func:`~neuroscale.report.figures.figure_to_png`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from neuroscale.report.figures import _bbox, _new_figure, _robust_limits, reorient_ras

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["edge_levels", "plot_registration"]

_ORIENTATIONS = ("sagittal", "coronal", "axial")
_EDGE_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffd60a")


def edge_levels(volume: np.ndarray, mask: np.ndarray | None = None) -> list[float]:
    """Intensity levels whose contours trace an image's tissue boundaries.

    Parameters
    ----------
    volume : ndarray, shape (x, y, z), float
        The image whose edges are drawn.
    mask : ndarray, shape (x, y, z), bool, optional
        Where to take the intensity distribution from (default: non-zero finite voxels).

    Returns
    -------
    list of float
        For an integer label image with at most 8 labels (e.g. a ``dseg``): the half-way values
        between consecutive labels, so each label's outline is drawn.  Otherwise one level: the
        Otsu threshold of the in-mask intensities (Otsu 1979, IEEE Trans SMC 9:62-66), which
        on a T1w brain separates grey from white matter and on an EPI brain from background.
    """
    vol = np.asarray(volume, dtype=np.float64)
    sel = np.isfinite(vol) & (vol != 0) if mask is None else np.asarray(mask, bool) & np.isfinite(vol)
    values = vol[sel]
    if values.size == 0:
        return []
    uniq = np.unique(values)
    if uniq.size <= 8 and np.all(uniq == np.round(uniq)):
        labels = np.concatenate([[0.0], uniq])
        return [float(v) for v in (labels[:-1] + labels[1:]) / 2]
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return [float(centres[int(np.argmax(between))])]


def _cut(vol: np.ndarray, orientation: str, index: int) -> np.ndarray:
    """A 2D slice of a RAS volume, rows top->bottom, columns left->right on the picture."""
    if orientation == "sagittal":  # x fixed: anterior on the right, superior up
        return vol[index, :, :].T[::-1, :]
    if orientation == "coronal":  # y fixed: subject's left on the left, superior up
        return vol[:, index, :].T[::-1, :]
    return vol[:, :, index].T[::-1, :]  # axial: left on the left, anterior up


def _aspect(vox: np.ndarray, orientation: str) -> float:
    if orientation == "sagittal":
        return float(vox[2] / vox[1])
    if orientation == "coronal":
        return float(vox[2] / vox[0])
    return float(vox[1] / vox[0])


def plot_registration(
    background: np.ndarray,
    edges_from: np.ndarray,
    affine: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    levels: Sequence[float] | None = None,
    title: str = "",
    n_cuts: int = 3,
    background_label: str = "",
    edges_label: str = "",
) -> Figure:
    """Mosaic of one image with the edges of another drawn over it, in 3 orientations.

    Parameters
    ----------
    background : ndarray, shape (x, y, z), float
        Image drawn in grey (e.g. the BOLD reference resampled into T1w space, or the T1w
        warped into template space).
    edges_from : ndarray, shape (x, y, z), float or int
        Image whose contours are drawn in colour (e.g. the T1w tissue segmentation or the
        template); same grid as ``background``.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine (mm) of the shared grid.
    mask : ndarray, shape (x, y, z), bool, optional
        Sets the crop (bounding box + 2 voxels), the positions of the cuts and the intensity
        range of ``edges_from`` used for :func:`edge_levels`; its outline is drawn in yellow.
        Default: the non-zero voxels of ``edges_from``.
    levels : sequence of float, optional
        Contour levels of ``edges_from`` (default :func:`edge_levels`).
    title : str
        Figure title.
    n_cuts : int
        Slices per orientation, evenly spaced over the central 60 % of the mask's extent.
    background_label, edges_label : str
        Legend text naming the two images.

    Returns
    -------
    matplotlib.figure.Figure
        Three rows (sagittal, coronal, axial), ``n_cuts`` columns, black background; each tile
        is labelled with its world coordinate (mm).  Neurological convention.

    Raises
    ------
    ValueError
        The volumes are not 3D or their shapes differ.
    """
    bg = np.asarray(background, dtype=np.float32)
    ed = np.asarray(edges_from, dtype=np.float32)
    if bg.ndim != 3 or bg.shape != ed.shape:
        raise ValueError(f"background {bg.shape} and edges_from {ed.shape} must be 3D volumes "
                         "on the same grid")
    if mask is None:
        mask = np.isfinite(ed) & (ed != 0)
    msk = np.asarray(mask, dtype=bool)
    if levels is None:
        levels = edge_levels(ed, msk)
    lv = sorted(float(v) for v in levels)

    bg_ras, aff_ras = reorient_ras(bg, affine)
    ed_ras, _ = reorient_ras(ed, affine)
    m_ras, _ = reorient_ras(msk, affine)
    crop = _bbox(m_ras if m_ras.any() else np.isfinite(bg_ras) & (bg_ras != 0))
    bg_c, ed_c, m_c = bg_ras[crop], ed_ras[crop], m_ras[crop]
    offset = np.array([s.start or 0 for s in crop], dtype=np.float64)
    vox = np.sqrt((aff_ras[:3, :3] ** 2).sum(axis=0))
    g_lo, g_hi = _robust_limits(bg_c[m_c] if m_c.any() else bg_c, 2, 99.5)

    n_cuts = max(1, int(n_cuts))
    fig = _new_figure(10.0, 10.0 * 3 / max(n_cuts, 3) + (0.5 if title else 0.2))
    fig.patch.set_facecolor("black")
    top = 0.93 if title else 0.98
    row_h = (top - 0.06) / 3
    for row, orient in enumerate(_ORIENTATIONS):
        axis = {"sagittal": 0, "coronal": 1, "axial": 2}[orient]
        n = bg_c.shape[axis]
        cuts = np.unique(np.round(np.linspace(0.2 * (n - 1), 0.8 * (n - 1), n_cuts)).astype(int))
        for col, k in enumerate(cuts):
            ax = fig.add_axes((col / len(cuts), 0.06 + (2 - row) * row_h, 1 / len(cuts), row_h))
            ax.set_facecolor("black")
            ax.set_axis_off()
            aspect = _aspect(vox, orient)
            ax.imshow(_cut(bg_c, orient, int(k)), cmap="gray", vmin=g_lo, vmax=g_hi,
                      aspect=aspect, interpolation="nearest")
            e2 = _cut(ed_c, orient, int(k))
            if lv and np.nanmax(e2) > lv[0] > np.nanmin(e2) - 1e-9:
                ax.contour(e2, levels=lv, colors=list(_EDGE_COLOURS[: len(lv)]) or None,
                           linewidths=0.8)
            m2 = _cut(m_c.astype(np.float32), orient, int(k))
            if m2.any() and not m2.all():
                ax.contour(m2, levels=[0.5], colors=["#ffd60a"], linewidths=0.6)
            world = float((aff_ras @ np.r_[np.where(np.arange(3) == axis, k + offset, 0.0),
                                           1.0])[axis])
            ax.text(0.02, 0.97, f"{'xyz'[axis]}={world:.0f}", color="white", fontsize=7,
                    va="top", ha="left", transform=ax.transAxes)
            if orient != "sagittal":
                ax.text(0.02, 0.02, "L", color="white", fontsize=7, transform=ax.transAxes,
                        alpha=0.8)
    legend = []
    if background_label:
        legend.append(f"grey: {background_label}")
    if edges_label:
        legend.append(f"contours: {edges_label}")
    if legend:
        fig.text(0.5, 0.015, "   ".join(legend), color="white", fontsize=8, ha="center")
    if title:
        fig.suptitle(title, color="white", fontsize=10, y=0.985)
    return fig
