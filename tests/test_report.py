"""Tests of neuroscale.report: self-contained participant and group HTML reports."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neuroscale.errors import AnalysisError, MissingMetadataError
from neuroscale.report import (
    ConnectivityMatrix,
    RunReport,
    figures,
    format_value,
    write_group_report,
    write_subject_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
class _Collector(HTMLParser):
    """Collects tags/attributes and checks that every non-void element is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
        else:
            self.stack.pop()


def _parse(text: str) -> tuple[_Collector, ET.Element]:
    assert text.startswith("<!DOCTYPE html>")
    assert text.rstrip().endswith("</html>")
    col = _Collector()
    col.feed(text)
    col.close()
    assert col.errors == []
    assert col.stack == []
    # Well-formed XML as well (the templates close every element, numeric references only).
    root = ET.fromstring(text[len("<!DOCTYPE html>") :])
    assert root.tag == "html"
    return col, root


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_MAGIC
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(b64, validate=True) for b64 in DATA_URI.findall(text)]


def _check_self_contained(text: str, col: _Collector) -> None:
    low = text.lower()
    assert "http://" not in low and "https://" not in low
    assert "<script" not in low and "<link" not in low and "@import" not in low and "url(" not in low
    for tag, attrs in col.tags:
        if "src" in attrs:
            assert (attrs["src"] or "").startswith("data:image/png;base64,"), tag


def _text_of(elem: ET.Element) -> str:
    return "".join(elem.itertext()).strip()


def _synthetic_run(name: str = "sub-01_task-rest_run-1", seed: int = 0) -> RunReport:
    rng = np.random.default_rng(seed)
    shape, n_t = (20, 20, 10), 50
    ii, jj, kk = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    mask = ((ii - 9.5) ** 2 / 64 + (jj - 9.5) ** 2 / 64 + (kk - 4.5) ** 2 / 16) <= 1.0
    mean = np.where(mask, 1000.0 + 10 * kk, 50.0).astype(np.float32)
    tsnr = np.where(mask, 60.0 + rng.normal(0, 5, shape), 5.0).astype(np.float32)
    carpet = rng.standard_normal((n_t, 120)).astype(np.float32)
    dvars = np.r_[np.nan, rng.uniform(5, 10, n_t - 1)]
    return RunReport(
        name=name,
        t_r=2.5,
        affine=np.diag([3.0, 3.0, 4.0, 1.0]),
        mask=mask,
        mean=mean,
        tsnr=tsnr,
        carpet=carpet,
        dvars=dvars,
        std_dvars=dvars / 7.5,
        global_signal=1000 + rng.normal(0, 2, n_t),
        outlier_fraction=rng.uniform(0, 0.01, n_t),
        non_steady_state=2,
        qc={"tsnr_median": 61.23456789, "dvars_mean": 7.5, "n_volumes": 50, "fd_mean": float("nan")},
        maps={
            "alff": np.abs(rng.normal(1, 0.3, shape)).astype(np.float32),
            "reho": rng.uniform(0, 1, shape).astype(np.float32),
            "seed": rng.normal(0, 0.3, shape).astype(np.float32),
        },
        connectivity=ConnectivityMatrix(
            np.tanh(rng.normal(0, 0.3, (12, 12))) + np.eye(12), [f"roi<{i}>" for i in range(12)], "toy-atlas"
        ),
        warnings=["No motion parameters: <FD> not computed & not shown"],
        outputs=["sub-01/func/sub-01_task-rest_run-1_desc-alff_bold.nii.gz", "sub-01/qc file.json"],
    )


# --------------------------------------------------------------------------------------------
# participant report
# --------------------------------------------------------------------------------------------
def test_subject_report_synthetic(tmp_path: Path) -> None:
    run = _synthetic_run()
    run2 = _synthetic_run("sub-01_task-rest_run-2", seed=1)
    run2.connectivity = None
    run2.maps = {}
    run2.warnings = []
    run2.outputs = []
    out = write_subject_report(
        tmp_path / "sub-01.html",
        "01",
        [run, run2],
        dataset_name="synthetic & co",
        software_version="9.9.9",
        parameters={"fwhm_mm": 6.0, "band_hz": [0.01, 0.08], "detrend": True},
    )
    assert out == tmp_path / "sub-01.html" and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["sub-01.html"]  # atomic: no temp left
    text = out.read_text(encoding="utf-8")
    col, root = _parse(text)
    _check_self_contained(text, col)

    # run 1: carpet, mean, tSNR, 3 maps, 1 matrix; run 2: carpet, mean, tSNR.
    imgs = _images(text)
    assert len(imgs) == 7 + 3
    assert sum(1 for tag, _ in col.tags if tag == "img") == len(imgs)
    for png in imgs:
        w, h = _png_size(png)
        assert 250 <= w <= 1400 and 150 <= h <= 1400
        assert 2_000 < len(png) < 600_000
    assert len(text) < 5_000_000

    # Sections and anchors per run.
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    assert {"run-sub-01_task-rest_run-1", "run-sub-01_task-rest_run-2", "methods"} <= ids

    # QC table: every number, formatted with 4 significant digits, in the run's table.
    tables = [t for t in root.iter("table") if t.get("class") == "qc"]
    assert len(tables) == 2
    cells = {
        _text_of(tr[0]): _text_of(tr[1]) for tr in tables[0].iter("tr") if tr[0].tag == "td"
    }
    assert cells == {"tsnr_median": "61.23", "dvars_mean": "7.5", "n_volumes": "50", "fd_mean": "n/a"}

    # Warnings escaped and present (only run 1 has one).
    assert "No motion parameters: &lt;FD&gt; not computed &amp; not shown" in text
    assert "<FD>" not in text
    warn = [e for e in root.iter("div") if e.get("class") == "warnings"]
    assert len(warn) == 1 and "<FD> not computed & not shown" in _text_of(warn[0])
    # Escaped labels / dataset name, parameters listed.
    assert "synthetic &amp; co" in text
    params = [t for t in root.iter("table") if t.get("class") == "parameters"][0]
    prow = {_text_of(tr[0]): _text_of(tr[1]) for tr in params.iter("tr") if tr[0].tag == "td"}
    assert prow == {"fwhm_mm": "6", "band_hz": "[0.01, 0.08]", "detrend": "True"}
    # Output links: relative, percent-encoded.
    hrefs = [a["href"] for tag, a in col.tags if tag == "a" and not (a["href"] or "").startswith("#")]
    assert hrefs == [
        "sub-01/func/sub-01_task-rest_run-1_desc-alff_bold.nii.gz",
        "sub-01/qc%20file.json",
    ]
    assert "9.9.9" in text
    assert "neurological convention" in text


def test_format_value() -> None:
    assert format_value(3) == "3"
    assert format_value(np.int64(7)) == "7"
    assert format_value(0.000123456) == "0.0001235"
    assert format_value(np.float32(2.5)) == "2.5"
    assert format_value(float("inf")) == "n/a"
    assert format_value(None) == "n/a"
    assert format_value(True) == "True"


def test_run_report_validation() -> None:
    good = _synthetic_run()
    kwargs = {k: getattr(good, k) for k in good.__dataclass_fields__}
    with pytest.raises(MissingMetadataError):
        RunReport(**{**kwargs, "t_r": 0.0})
    with pytest.raises(AnalysisError, match="tsnr"):
        RunReport(**{**kwargs, "tsnr": good.tsnr[:-1]})
    with pytest.raises(AnalysisError, match="dvars"):
        RunReport(**{**kwargs, "dvars": good.dvars[:-1]})
    with pytest.raises(AnalysisError, match="map 'alff'"):
        RunReport(**{**kwargs, "maps": {"alff": np.zeros((3, 3, 3))}})
    with pytest.raises(AnalysisError, match="labels"):
        ConnectivityMatrix(np.eye(3), ["a", "b"], "x")
    with pytest.raises(AnalysisError, match="non_steady_state"):
        RunReport(**{**kwargs, "non_steady_state": 51})


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def test_reorient_matches_nibabel_canonical() -> None:
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(7, 8, 9)).astype(np.float32)
    affine = np.array([[-3.0, 0, 0, 90], [0, 0, 3.3, -50], [0, 2.9, 0, -40], [0, 0, 0, 1]])
    ref = nib.as_closest_canonical(nib.Nifti1Image(vol, affine))
    got, aff = figures.reorient_ras(vol, affine)
    np.testing.assert_array_equal(got, np.asarray(ref.dataobj))
    np.testing.assert_allclose(aff, ref.affine, rtol=1e-6)


def test_mosaic_is_neurological_anterior_up() -> None:
    """A marker in the subject's left-anterior brain is drawn top-left of its tile."""
    shape = (20, 24, 6)
    # LAS storage, as the studyforrest run: voxel i increases towards the subject's LEFT.
    affine = np.array([[-3.0, 0, 0, 30], [0, 3.0, 0, -36], [0, 0, 3.0, -9], [0, 0, 0, 1]])
    vol = np.zeros(shape, dtype=np.float32)
    world = np.array([-20.0, 25.0, 0.0, 1.0])  # x < 0: left, y > 0: anterior
    i, j, k = np.round(np.linalg.solve(affine, world)[:3]).astype(int)
    vol[i, j, k] = 1.0
    ras, aff = figures.reorient_ras(vol, affine)
    tiles = figures._tile(ras, np.array([k]), 1, 0.0)
    r, c = np.argwhere(tiles == 1.0)[0]
    assert c < tiles.shape[1] / 2  # subject's left on the picture's left
    assert r < tiles.shape[0] / 2  # anterior up
    # And the whole figure renders.
    mask = np.zeros(shape, dtype=bool)
    mask[3:17, 3:21, 1:5] = True
    png = figures.figure_to_png(figures.plot_mosaic(vol + 1, affine, mask, title="t"))
    assert _png_size(png)[0] > 300


def test_mosaic_degenerate_inputs() -> None:
    """Constant, all-NaN and empty-mask inputs still render (no division by zero)."""
    shape = (10, 12, 5)
    mask = np.zeros(shape, dtype=bool)
    for bg, ov, m in [
        (np.ones(shape), np.zeros(shape), mask),
        (np.ones(shape), np.full(shape, np.nan), ~mask),
        (np.zeros(shape), None, None),
    ]:
        fig = figures.plot_mosaic(bg, np.eye(4), m, overlay=ov)
        assert figures.figure_to_png(fig)[:8] == PNG_MAGIC


def test_carpet_axes_in_seconds() -> None:
    from matplotlib.patches import Rectangle

    rng = np.random.default_rng(0)
    n_t, t_r = 40, 1.5
    traces = {"a": (rng.normal(size=n_t), "C0"), "b": (rng.normal(size=n_t), "C1")}
    fig = figures.plot_carpet(rng.normal(size=(n_t, 30)), t_r, traces, non_steady_state=3)
    axes = fig.get_axes()
    assert len(axes) == 3
    for ax in axes:
        np.testing.assert_allclose(ax.get_xlim(), (-0.5 * t_r, (n_t - 0.5) * t_r))
        spans = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]
        assert len(spans) == 1
        np.testing.assert_allclose(float(spans[0].get_width()), 3 * t_r)
    np.testing.assert_allclose(np.asarray(axes[0].lines[0].get_xdata(), dtype=float), np.arange(n_t) * t_r)
    assert axes[-1].images[0].get_clim() == (-2.0, 2.0)


def test_matrix_symmetric_scale_and_labels() -> None:
    rng = np.random.default_rng(1)
    small = np.arctanh(np.clip(np.corrcoef(rng.normal(size=(10, 30))), -0.99, 0.99))
    np.fill_diagonal(small, np.inf)
    fig = figures.plot_matrix(small, [f"r{i}" for i in range(10)])
    ax = fig.get_axes()[0]
    off = np.abs(small[~np.eye(10, dtype=bool)])
    np.testing.assert_allclose(ax.images[0].get_clim(), (-off.max(), off.max()), rtol=1e-12)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"r{i}" for i in range(10)]
    big = figures.plot_matrix(np.eye(80) * 0.5, [f"r{i}" for i in range(80)])
    assert all(not t.get_text().startswith("r") for t in big.get_axes()[0].get_xticklabels())


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, neuroscale.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


# --------------------------------------------------------------------------------------------
# group report
# --------------------------------------------------------------------------------------------
def test_group_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 8
    table = pd.DataFrame(
        {
            "subject": [f"{i:02d}" for i in range(n)],
            "run": [f"task-rest_run-{i % 2 + 1}" for i in range(n)],
            "tsnr_median": rng.normal(60, 3, n),
            "dvars_mean": rng.normal(8, 0.5, n),
            "n_volumes": np.full(n, 150),
        }
    )
    table.loc[3, "tsnr_median"] = 12.345678
    table["tsnr_median_outlier"] = np.arange(n) == 3
    table["dvars_mean_outlier"] = False
    names = [f"reg{i}" for i in range(6)]
    mat = np.tanh(rng.normal(0, 0.4, (6, 6)))
    out = write_group_report(
        tmp_path / "group.html",
        table,
        {"toy-atlas": (mat, names), "other": (mat[:4, :4], names[:4])},
        software_version="1.2.3",
        subject_reports={"03": "sub-03.html"},
    )
    text = out.read_text(encoding="utf-8")
    col, root = _parse(text)
    _check_self_contained(text, col)
    imgs = _images(text)
    assert len(imgs) == 3 + 2  # one per metric + one per atlas
    for png in imgs:
        w, h = _png_size(png)
        assert 200 <= w <= 1400 and 150 <= h <= 1400

    qc = [t for t in root.iter("table") if t.get("class") == "qc"][0]
    header = [_text_of(th) for th in qc.iter("th")]
    assert header == ["subject", "run", "tsnr_median", "dvars_mean", "n_volumes", "outlier metrics"]
    rows = [tr for tr in qc.iter("tr") if tr.find("td") is not None]
    assert len(rows) == n
    flagged = [i for i, tr in enumerate(rows) if tr.get("class") == "outlier"]
    assert flagged == [3]
    cells = list(rows[3].iter("td"))
    assert cells[2].get("class") == "num outlier" and _text_of(cells[2]) == "12.35"
    assert _text_of(cells[-1]) == "tsnr_median"
    assert all("outlier" not in (td.get("class") or "") for tr in rows[:3] for td in tr.iter("td"))
    for i, tr in enumerate(rows):
        tds = list(tr.iter("td"))
        assert _text_of(tds[3]) == format(float(table.loc[i, "dvars_mean"]), ".4g")
    assert rows[3].find("td/a").get("href") == "sub-03.html"  # type: ignore[union-attr]
    assert "toy-atlas" in text and "1.2.3" in text


def test_group_report_errors(tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="no rows"):
        write_group_report(tmp_path / "g.html", pd.DataFrame({"subject": [], "x": []}))
    bad = pd.DataFrame({"subject": ["01"], "x": [1.0], "x_outlier": [1.0]})
    with pytest.raises(AnalysisError, match="boolean"):
        write_group_report(tmp_path / "g.html", bad)
    assert not (tmp_path / "g.html").exists()


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------
def test_subject_report_studyforrest(studyforrest_bold: Path, tmp_path: Path) -> None:
    from nilearn.masking import compute_epi_mask
    from scipy.signal import detrend

    img = nib.load(studyforrest_bold)
    assert isinstance(img, nib.Nifti1Image)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mean = data.mean(axis=-1)
    sd = data.std(axis=-1)
    tsnr = np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0)
    mask = compute_epi_mask(nib.Nifti1Image(mean, img.affine)).get_fdata().astype(bool)
    ts = data[mask].T  # (T, N)
    del data
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(ts.shape[1], 600, replace=False))
    carpet = detrend(ts[:, rows], axis=0)
    carpet = (carpet / carpet.std(axis=0)).astype(np.float32)
    dvars = np.r_[np.nan, np.sqrt(np.mean(np.diff(ts, axis=0) ** 2, axis=1))]
    run = RunReport(
        name="sub-02_task-oneback_run-1",
        t_r=2.0,
        affine=img.affine,
        mask=mask,
        mean=mean,
        tsnr=tsnr,
        carpet=carpet,
        dvars=dvars,
        std_dvars=dvars / np.nanmedian(dvars),
        global_signal=ts.mean(axis=1),
        non_steady_state=0,
        qc={"tsnr_median": float(np.median(tsnr[mask])), "n_volumes": ts.shape[0]},
        maps={"std": sd},
    )
    t0 = time.perf_counter()
    out = write_subject_report(tmp_path / "sub-02.html", "sub-02", [run], software_version="0.1.0")
    elapsed = time.perf_counter() - t0
    assert elapsed < 20
    text = out.read_text(encoding="utf-8")
    col, root = _parse(text)
    _check_self_contained(text, col)
    imgs = _images(text)
    assert len(imgs) == 4
    sizes = [_png_size(p) for p in imgs]
    assert all(w >= 600 for w, _ in sizes)
    assert len(text) < 2_000_000
    qc = [t for t in root.iter("table") if t.get("class") == "qc"][0]
    cells = {_text_of(tr[0]): _text_of(tr[1]) for tr in qc.iter("tr") if tr[0].tag == "td"}
    assert cells == {
        "tsnr_median": format(float(np.median(tsnr[mask])), ".4g"),
        "n_volumes": "156",
    }
