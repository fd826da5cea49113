"""Static figures for the HTML reports, rendered to PNG bytes.

Every function here builds a :class:`matplotlib.figure.Figure` directly and renders it with the
Agg canvas (``matplotlib.backends.backend_agg.FigureCanvasAgg``): no ``pyplot``, no global
backend switch, no state shared between calls, so figures can be drawn from worker threads and
importing :mod:`neuroscale.report` does not import matplotlib at all (it is imported inside the
functions).

Orientation
-----------
Volumes are reoriented to the closest canonical RAS+ orientation of their affine
(:func:`nibabel.orientations.io_orientation`, as ``nibabel.as_closest_canonical`` does) and axial
slices are drawn in **neurological convention**: the subject's left on the left of the picture,
anterior at the top, slices ordered inferior to superior (left to right, then top to bottom).

Figure conventions follow the fMRIPrep / MRIQC visual reports (Esteban et al. 2017, PLoS ONE
12:e0184661; Esteban et al. 2019, Nat Methods 16:111-116): the carpet plot of Power (2017,
NeuroImage 154:150-158) with DVARS (Power et al. 2012, NeuroImage 59:2142-2154), standardised
DVARS (Nichols 2017, arXiv:1704.01469; ``nipype.algorithms.confounds.compute_dvars``) and the
global signal stacked above it on a shared time axis, as in ``niworkflows.viz.plots.fMRIPlot``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "figure_to_png",
    "plot_carpet",
    "plot_group_metric",
    "plot_matrix",
    "plot_mosaic",
    "png_data_uri",
    "reorient_ras",
]

#: Resolution of every report figure (dots per inch).  Figures are 7-10 inches wide, so a
#: report figure is 630-900 pixels wide: sharp on screen, ~30-200 kB as PNG.
DPI = 90

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free Agg figure of ``width`` x ``height`` inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_to_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg canvas.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure (built by one of this module's ``plot_*`` functions).

    Returns
    -------
    bytes
        A PNG file (starts with the 8-byte PNG signature), rendered at :data:`DPI`.  The
        ``Software`` text chunk that matplotlib adds (it contains a URL) is dropped so the
        report holds no web address at all.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):  # pragma: no cover - defensive
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight",
                pad_inches=0.08)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """Return ``data:image/png;base64,...`` for embedding ``png`` in an ``<img src>``.

    Parameters
    ----------
    png : bytes
        PNG file content.

    Returns
    -------
    str
        An RFC 2397 data URI (base64, ASCII only; safe in HTML attributes unescaped).
    """
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --------------------------------------------------------------------------------------------
# Orientation
# --------------------------------------------------------------------------------------------
def reorient_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a volume to the closest canonical RAS+ voxel order.

    Parameters
    ----------
    volume : ndarray, shape (x, y, z)
        Any dtype.
    affine : ndarray, shape (4, 4)
        Voxel-to-world (mm) affine of ``volume``.

    Returns
    -------
    volume_ras : ndarray, shape (x', y', z')
        The axes permuted and flipped so that the first axis points Right, the second Anterior
        and the third Superior (as ``nibabel.as_closest_canonical``; no resampling).
    affine_ras : ndarray, shape (4, 4), float64
        The matching affine.
    """
    from nibabel import orientations as ornt_mod

    ornt = ornt_mod.io_orientation(affine)
    vol = ornt_mod.apply_orientation(np.asarray(volume), ornt)
    new_affine = np.asarray(affine, dtype=np.float64) @ ornt_mod.inv_ornt_aff(ornt, volume.shape)
    return vol, new_affine


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _bbox(mask: np.ndarray, margin: int = 2) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` (3D bool) grown by ``margin`` voxels; the whole volume if empty."""
    if not mask.any():
        return (slice(None), slice(None), slice(None))
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + margin + 1, mask.shape[ax])))
    return out[0], out[1], out[2]


def _pick_slices(mask: np.ndarray, n_slices: int) -> np.ndarray:
    """Indices of up to ``n_slices`` axial slices spread over the mask's extent in z."""
    nz = mask.shape[2]
    present = np.flatnonzero(mask.any(axis=(0, 1))) if mask.any() else np.arange(nz)
    lo, hi = int(present[0]), int(present[-1])
    count = min(n_slices, hi - lo + 1)
    return np.unique(np.round(np.linspace(lo, hi, count)).astype(int))


def _tile(vol: np.ndarray, slices: np.ndarray, ncols: int, fill: float) -> np.ndarray:
    """Tile axial slices (RAS volume) into one 2D picture, anterior up, left on the left."""
    nx, ny = vol.shape[0], vol.shape[1]
    nrows = -(-len(slices) // ncols)
    canvas = np.full((nrows * ny, ncols * nx), fill, dtype=np.float64)
    for i, k in enumerate(slices):
        r, c = divmod(i, ncols)
        # rows = y descending (anterior at the top); columns = x ascending (subject's left first).
        canvas[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx] = vol[:, :, k].T[::-1, :]
    return canvas


def _robust_limits(values: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(finite, [lo, hi]))
    if vmax <= vmin:
        vmax = vmin + (abs(vmin) if vmin != 0 else 1.0)
    return vmin, vmax


def plot_mosaic(
    background: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    overlay: np.ndarray | None = None,
    title: str = "",
    cmap: str | None = None,
    symmetric: bool | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str = "",
    n_slices: int = 18,
    ncols: int = 6,
    contour: bool = True,
) -> Figure:
    """Axial mosaic of a volume, optionally with a map overlaid and the mask contour.

    Parameters
    ----------
    background : ndarray, shape (x, y, z), float
        Volume drawn in grey (e.g. the mean EPI), or in ``cmap`` when ``overlay`` is None.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine (mm) shared by every volume.
    mask : ndarray, shape (x, y, z), bool, optional
        Brain mask: sets the slices shown (its z extent) and the crop (its bounding box + 2
        voxels), is drawn as a contour when ``contour`` is true, and restricts ``overlay``.
    overlay : ndarray, shape (x, y, z), float, optional
        Map drawn in colour over the grey background; non-finite values, and values outside
        ``mask``, are transparent.
    title : str
        Figure title.
    cmap : str, optional
        Colour map of the coloured layer.  Default ``"RdBu_r"`` for symmetric scales, else
        ``"hot"`` for an overlay and ``"gray"`` for a background alone.
    symmetric : bool, optional
        Colour scale symmetric about zero (``[-m, m]``, ``m`` the 99th percentile of
        ``|values|`` in the mask).  Default: True when the in-mask values take both signs with
        the smaller side holding at least 5 % of the range.
    vmin, vmax : float, optional
        Explicit colour limits (default: 2nd and 98th percentiles in the mask).
    colorbar_label : str
        Label of the colour bar (units).
    n_slices : int
        Number of axial slices, evenly spread between the lowest and highest slice that hold
        mask voxels.
    ncols : int
        Slices per row.
    contour : bool
        Draw the mask outline.

    Returns
    -------
    matplotlib.figure.Figure
        Neurological convention (subject's left on the left), anterior up; each tile is
        labelled with its world z coordinate (mm).
    """
    bg_ras, aff_ras = reorient_ras(np.asarray(background, dtype=np.float32), affine)
    if mask is None:
        mask_ras = np.isfinite(bg_ras) & (bg_ras != 0)
    else:
        mask_ras, _ = reorient_ras(np.asarray(mask, dtype=bool), affine)
    crop = _bbox(mask_ras)
    bg_c = bg_ras[crop]
    mask_c = mask_ras[crop]
    slices = _pick_slices(mask_c, n_slices)
    ncols = max(1, min(ncols, len(slices)))
    nrows = -(-len(slices) // ncols)

    color_vals: np.ndarray
    if overlay is not None:
        ov_ras, _ = reorient_ras(np.asarray(overlay, dtype=np.float32), affine)
        ov_c = np.where(mask_c, ov_ras[crop], np.nan)
        color_vals = ov_c[mask_c & np.isfinite(ov_c)]
        color_layer = _tile(ov_c, slices, ncols, np.nan)
    else:
        color_vals = bg_c[mask_c & np.isfinite(bg_c)] if mask_c.any() else bg_c.ravel()
        color_layer = None
    lo_c, hi_c, cmap = _colour_scale(color_vals, overlay is not None, symmetric=symmetric,
                                     vmin=vmin, vmax=vmax, cmap=cmap)

    bg_tiles = _tile(bg_c, slices, ncols, np.nan)
    vox = _voxel_sizes(aff_ras)
    aspect = float(vox[1] / vox[0])
    tile_w, tile_h = bg_c.shape[0], bg_c.shape[1] * aspect
    width = 10.0
    img_w = width * 0.9
    height = img_w * (nrows * tile_h) / (ncols * tile_w) + (0.45 if title else 0.15)
    fig = _new_figure(width, max(height, 1.5))
    fig.patch.set_facecolor("black")
    top = 1 - (0.4 / fig.get_figheight() if title else 0.02)
    ax = fig.add_axes((0.0, 0.02, 0.9, top - 0.02))
    ax.set_facecolor("black")
    ax.set_axis_off()
    import matplotlib as mpl

    if color_layer is None:
        ax.imshow(bg_tiles, cmap=cmap, vmin=lo_c, vmax=hi_c, aspect=aspect, interpolation="nearest")
        mappable = ax.images[0]
    else:
        g_lo, g_hi = _robust_limits(bg_c[mask_c] if mask_c.any() else bg_c, 2, 99.5)
        ax.imshow(bg_tiles, cmap="gray", vmin=g_lo, vmax=g_hi, aspect=aspect, interpolation="nearest")
        cm = mpl.colormaps[cmap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
        mappable = ax.imshow(
            np.ma.masked_invalid(color_layer),
            cmap=cm,
            vmin=lo_c,
            vmax=hi_c,
            aspect=aspect,
            interpolation="nearest",
        )
    if contour and mask is not None and mask_c.any():
        m_tiles = _tile(mask_c.astype(np.float64), slices, ncols, 0.0)
        ax.contour(m_tiles, levels=[0.5], colors=["#ff7f0e"], linewidths=0.7)
    nx, ny = bg_c.shape[0], bg_c.shape[1]
    _label_tiles(ax, aff_ras, slices, ncols, (nx, ny), crop[2].start or 0)
    ax.set_xlim(-0.5, ncols * nx - 0.5)
    ax.set_ylim(nrows * ny - 0.5, -0.5)
    cax = fig.add_axes((0.915, 0.12, 0.015, max(top - 0.24, 0.2)))
    cb = fig.colorbar(mappable, cax=cax)
    cb.ax.tick_params(colors="white", labelsize=7)
    cb.outline.set_edgecolor("white")
    if colorbar_label:
        cb.set_label(colorbar_label, color="white", fontsize=8)
    if title:
        fig.suptitle(title, color="white", fontsize=10, y=1 - 0.08 / fig.get_figheight())
    return fig


def _colour_scale(color_vals: np.ndarray, has_overlay: bool, *, symmetric: bool | None,
                  vmin: float | None, vmax: float | None, cmap: str | None
                  ) -> tuple[float, float, str]:
    """``(vmin, vmax, cmap)`` of the coloured layer of :func:`plot_mosaic` (its defaults).

    ``color_vals`` are the finite in-mask values of that layer; ``symmetric`` None is decided
    from them (both signs, the smaller side at least 5 % of the range; overlays only).
    """
    if symmetric is None:
        symmetric = False
        if color_vals.size and has_overlay:
            lo, hi = float(np.min(color_vals)), float(np.max(color_vals))
            symmetric = lo < 0 < hi and min(-lo, hi) >= 0.05 * (hi - lo)
    if symmetric:
        m = float(np.percentile(np.abs(color_vals), 99)) if color_vals.size else 1.0
        m = m if m > 0 else 1.0
        lo_c, hi_c = -m, m
    else:
        lo_c, hi_c = _robust_limits(color_vals, 2, 98)
    lo_c = lo_c if vmin is None else float(vmin)
    hi_c = hi_c if vmax is None else float(vmax)
    if cmap is None:
        cmap = "RdBu_r" if symmetric else ("hot" if has_overlay else "gray")
    return lo_c, hi_c, cmap


def _label_tiles(ax: Axes, aff_ras: np.ndarray, slices: np.ndarray, ncols: int,
                 tile: tuple[int, int], z0: int) -> None:
    """Write each tile's world z (mm) and the L / R marks on the first tile of a mosaic.

    ``slices`` are z indices into the crop, which starts at slice ``z0`` of the RAS grid
    ``aff_ras``; ``tile`` is the ``(nx, ny)`` size of one tile in pixels.
    """
    nx, ny = tile
    for i, k in enumerate(slices):
        r, c = divmod(i, ncols)
        zmm = float((aff_ras @ np.array([0.0, 0.0, float(k + z0), 1.0]))[2])
        ax.text(c * nx + 1, r * ny + 1, f"z={zmm:.0f}", color="white", fontsize=6.5, va="top", ha="left")
    ax.text(0.5, 1 * ny - 1.5, "L", color="white", fontsize=7, va="bottom", ha="left", alpha=0.8)
    ax.text(nx - 1.5, 1 * ny - 1.5, "R", color="white", fontsize=7, va="bottom", ha="right", alpha=0.8)


# --------------------------------------------------------------------------------------------
# Carpet plot
# --------------------------------------------------------------------------------------------
def plot_carpet(
    carpet: np.ndarray,
    t_r: float,
    traces: Mapping[str, tuple[np.ndarray, str]],
    *,
    non_steady_state: int = 0,
    title: str = "",
    vlim: float = 2.0,
) -> Figure:
    """Carpet plot with confound traces stacked above it on a shared time axis.

    Parameters
    ----------
    carpet : ndarray, shape (T, n_rows), float
        Voxel time series (already detrended and z-scored by the caller), drawn one row per
        voxel in the order given, time along x.
    t_r : float
        Repetition time in seconds; volume ``i`` is drawn at ``i * t_r`` s.
    traces : mapping of str to (ndarray (T,), str)
        Name -> (values, colour) of each trace drawn above the carpet, top to bottom
        (e.g. FD, DVARS, std DVARS, global signal, outlier fraction).  Non-finite samples
        (e.g. DVARS of the first volume) leave a gap.
    non_steady_state : int
        Number of initial non-steady-state volumes; shaded on every panel.
    title : str
        Figure title.
    vlim : float
        Carpet colour limits ``[-vlim, vlim]`` (z units; Power 2017 and ``niworkflows`` use
        +/-2 for z-scored data).

    Returns
    -------
    matplotlib.figure.Figure
    """
    carpet = np.asarray(carpet, dtype=np.float32)
    n_t = carpet.shape[0]
    n_tr = len(traces)
    height = 1.1 + 0.75 * n_tr + 3.2
    fig = _new_figure(10.0, height)
    ratios = [1.0] * n_tr + [4.2]
    gs = fig.add_gridspec(n_tr + 1, 1, height_ratios=ratios, hspace=0.12, left=0.13, right=0.97,
                          top=1 - 0.45 / height, bottom=0.5 / height)
    t = np.arange(n_t, dtype=np.float64) * t_r
    x_lo, x_hi = -0.5 * t_r, (n_t - 0.5) * t_r
    axes: list[Axes] = []
    for i, (name, (values, colour)) in enumerate(traces.items()):
        ax = fig.add_subplot(gs[i, 0], sharex=axes[0] if axes else None)
        v = np.asarray(values, dtype=np.float64)
        ax.plot(t, v, color=colour, linewidth=0.9)
        finite = v[np.isfinite(v)]
        label = name
        if finite.size:
            label = f"{name}\n(max {np.max(finite):.3g})"
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7.5)
        ax.tick_params(labelsize=6.5, labelbottom=False)
        ax.yaxis.set_major_locator(_max_ticks(3))
        for s in ("top", "right"):
            ax.spines[s].set_visible(False)
        axes.append(ax)
    ax_c = fig.add_subplot(gs[n_tr, 0], sharex=axes[0] if axes else None)
    n_rows = carpet.shape[1]
    im = ax_c.imshow(
        carpet.T,
        cmap="gray",
        vmin=-vlim,
        vmax=vlim,
        aspect="auto",
        interpolation="nearest" if n_rows <= 600 else "antialiased",
        extent=(x_lo, x_hi, n_rows - 0.5, -0.5),
    )
    del im
    ax_c.set_ylabel(f"voxels\n({n_rows} rows)", rotation=0, ha="right", va="center", fontsize=7.5)
    ax_c.set_yticks([])
    ax_c.set_xlabel("time (s)", fontsize=8)
    ax_c.tick_params(labelsize=7)
    ax_c.set_xlim(x_lo, x_hi)
    if non_steady_state > 0:
        for ax in [*axes, ax_c]:
            ax.axvspan(x_lo, (non_steady_state - 0.5) * t_r, color="#d62728", alpha=0.18, lw=0)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    return fig


def _max_ticks(n: int) -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=n, min_n_ticks=2)


# --------------------------------------------------------------------------------------------
# Matrices
# --------------------------------------------------------------------------------------------
def plot_matrix(
    matrix: np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    title: str = "",
    colorbar_label: str = "Fisher z",
    max_labels: int = 60,
) -> Figure:
    """A connectivity matrix on a symmetric colour scale.

    Parameters
    ----------
    matrix : ndarray, shape (L, L), float
        Fisher-z or Pearson correlation matrix.  The diagonal (infinite for Fisher z,
        ``arctanh(1)``) and any non-finite entry are drawn blank.
    labels : sequence of str, optional
        Region names (length L); printed on both axes when ``L <= max_labels``.
    title : str
        Figure title.
    colorbar_label : str
        Colour bar label.
    max_labels : int
        Largest L for which labels are printed.

    Returns
    -------
    matplotlib.figure.Figure
        ``imshow`` with colour limits ``[-m, m]``, ``m`` the largest finite off-diagonal
        ``|value|`` (as ``nilearn.plotting.plot_matrix`` with ``vmax=None``), colour map RdBu_r.
    """
    import matplotlib as mpl

    mat = np.array(matrix, dtype=np.float64)
    n = mat.shape[0]
    np.fill_diagonal(mat, np.nan)
    finite = np.abs(mat[np.isfinite(mat)])
    m = float(finite.max()) if finite.size else 1.0
    m = m if m > 0 else 1.0
    show_labels = labels is not None and len(labels) == n and n <= max_labels
    side = 6.5 if show_labels else 5.5
    fig = _new_figure(side + 1.0, side)
    if show_labels:
        ax = fig.add_axes((0.24, 0.22, 0.62, 0.72))
        cax = fig.add_axes((0.88, 0.22, 0.022, 0.72))
    else:
        ax = fig.add_axes((0.08, 0.08, 0.76, 0.84))
        cax = fig.add_axes((0.87, 0.08, 0.025, 0.84))
    cm = mpl.colormaps["RdBu_r"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cm, vmin=-m, vmax=m, interpolation="nearest")
    if show_labels and labels is not None:
        fs = float(np.clip(420.0 / max(n, 1), 4.0, 8.0))
        ax.set_xticks(np.arange(n))
        ax.set_yticks(np.arange(n))
        ax.set_xticklabels([str(s) for s in labels], rotation=90, fontsize=fs)
        ax.set_yticklabels([str(s) for s in labels], fontsize=fs)
        ax.tick_params(length=0)
    else:
        ax.tick_params(labelsize=7)
        ax.set_xlabel("region", fontsize=8)
        ax.set_ylabel("region", fontsize=8)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(colorbar_label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Group plots
# --------------------------------------------------------------------------------------------
def plot_group_metric(
    values: np.ndarray,
    outlier: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    *,
    metric: str = "",
    max_annotations: int = 8,
) -> Figure:
    """Box plot with every run drawn as a jittered point; outliers in red and named.

    Parameters
    ----------
    values : ndarray, shape (n_runs,), float
        The metric, one value per run; non-finite values are skipped.
    outlier : ndarray, shape (n_runs,), bool, optional
        Runs flagged as outliers by the caller (e.g. robust z-score, MRIQC's group report):
        drawn as red diamonds.
    names : sequence of str, optional
        Run labels (length n_runs) written next to the first ``max_annotations`` outliers.
    metric : str
        Metric name (axis label and title).
    max_annotations : int
        At most this many outliers are labelled.

    Returns
    -------
    matplotlib.figure.Figure
        Box = quartiles, whiskers = 1.5 IQR (matplotlib defaults, as MRIQC's group
        ``boxplot``), jitter is deterministic (seeded).
    """
    vals = np.asarray(values, dtype=np.float64)
    flags = np.zeros(vals.shape, dtype=bool) if outlier is None else np.asarray(outlier, dtype=bool)
    ok = np.isfinite(vals)
    fig = _new_figure(3.4, 3.0)
    ax = fig.add_axes((0.25, 0.1, 0.7, 0.78))
    if ok.any():
        ax.boxplot(vals[ok], positions=[0.0], widths=0.5, showfliers=False,
                   medianprops={"color": "#1f77b4"})
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.16, 0.16, size=vals.shape)
    normal = ok & ~flags
    bad = ok & flags
    ax.scatter(jitter[normal], vals[normal], s=14, color="0.25", alpha=0.7, zorder=3, lw=0)
    ax.scatter(jitter[bad], vals[bad], s=30, color="#d62728", marker="D", zorder=4, lw=0,
               label="outlier")
    if names is not None:
        for i in np.flatnonzero(bad)[:max_annotations]:
            ax.annotate(str(names[i]), (float(jitter[i]), float(vals[i])), xytext=(6, 0),
                        textcoords="offset points", fontsize=6, color="#d62728", va="center")
    ax.set_xlim(-0.5, 1.1)
    ax.set_xticks([])
    ax.set_ylabel(metric, fontsize=8)
    ax.tick_params(labelsize=7)
    n_bad = int(bad.sum())
    ax.set_title(f"{metric}  (n={int(ok.sum())}, outliers={n_bad})", fontsize=8)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    return fig
