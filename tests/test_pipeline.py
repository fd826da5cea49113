"""End to end: the BIDS App on the real example dataset, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neuroscale.cli.main import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ds-studyforrest-oneback"
ATLAS = REPO / "examples" / "atlas" / "aal.nii.gz"
SEED = "0,-66,3,8"
PREFIX = "sub-02_task-oneback_run-1"


@pytest.fixture(scope="module")
def participant_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    out = tmp_path_factory.mktemp("deriv") / "out"
    work = out.parent / "work"
    code = main([str(EXAMPLE), str(out), "participant", "--participant-label", "02",
                 "--atlas", str(ATLAS), "--seed", SEED, "--work-dir", str(work),
                 "--n-workers", "2", "--memory-limit", "3GB", "--no-progress"])
    return out, work, code


@pytest.mark.slow
def test_every_output_is_produced(participant_run: tuple[Path, Path, int]) -> None:
    out, _, code = participant_run
    assert code == 0
    func = out / "sub-02" / "func"
    expected = [
        "desc-brain_mask.nii.gz", "desc-qc_bold.json",
        "stat-tsnr_boldmap.nii.gz", "stat-alff_boldmap.nii.gz", "stat-falff_boldmap.nii.gz",
        "stat-reho_boldmap.nii.gz", "stat-dcb_boldmap.nii.gz", "stat-dcw_boldmap.nii.gz",
        "seed-1_stat-fisherz_boldmap.nii.gz",
        "atlas-aal_stat-mean_timeseries.tsv", "atlas-aal_stat-pearsoncorrelation_relmat.tsv",
        "atlas-aal_stat-partialcorrelation_relmat.tsv", "atlas-aal_stat-coverage_bold.tsv",
    ]
    for suffix in expected:
        path = func / f"{PREFIX}_{suffix}"
        assert path.is_file(), path
        if not suffix.endswith(".json"):
            sidecar = func / (path.name.split(".")[0] + ".json")
            prov = json.loads(sidecar.read_text())
            blob = json.dumps(prov)
            assert "sha256" in blob.lower()
            assert "neuroscale" in blob
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "neuroscale"
    report = out / "sub-02.html"
    assert report.is_file() and report.stat().st_size > 50_000
    assert not list(out.rglob(".tmp-*"))
    # maps are in the BOLD's space and non-trivial inside the mask
    bold = nib.load(EXAMPLE / "sub-02" / "func" / f"{PREFIX}_bold.nii.gz")
    mask = np.asarray(nib.load(func / f"{PREFIX}_desc-brain_mask.nii.gz").dataobj) > 0
    for stat in ("tsnr", "alff", "falff", "reho", "dcb", "dcw"):
        img = nib.load(func / f"{PREFIX}_stat-{stat}_boldmap.nii.gz")
        assert img.shape == bold.shape[:3]
        np.testing.assert_allclose(img.affine, bold.affine, atol=1e-4)
        values = np.asarray(img.dataobj)[mask]
        assert np.isfinite(values).all() and values.std() > 0, stat
    ts = pd.read_csv(func / f"{PREFIX}_atlas-aal_stat-mean_timeseries.tsv", sep="\t")
    qc = json.loads((func / f"{PREFIX}_desc-qc_bold.json").read_text())
    assert ts.shape[0] == qc["n_volumes_kept"] <= 156
    rel = pd.read_csv(func / f"{PREFIX}_atlas-aal_stat-pearsoncorrelation_relmat.tsv", sep="\t",
                      index_col="Node")
    assert rel.shape[0] == rel.shape[1] == ts.shape[1]


MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


@pytest.mark.slow
def test_preprocessing_outputs(participant_run: tuple[Path, Path, int]) -> None:
    """Raw input is realigned, the T1w registered to MNI, the atlas brought to native space,
    confounds built with fMRIPrep's names; the checks and figures are in QC JSON and report."""
    out, _, code = participant_run
    assert code == 0
    func = out / "sub-02" / "func"
    anat = out / "sub-02" / "anat"
    motion = pd.read_csv(func / f"{PREFIX}_desc-motion_timeseries.tsv", sep="\t",
                         na_values="n/a")
    assert list(motion.columns[:6]) == MOTION_COLUMNS and len(motion) == 156
    assert np.abs(motion[MOTION_COLUMNS[:3]].to_numpy()).max() < 10  # mm, a cooperative subject
    assert np.abs(motion[MOTION_COLUMNS[3:]].to_numpy()).max() < 0.2  # rad
    conf = pd.read_csv(func / f"{PREFIX}_desc-confounds_timeseries.tsv", sep="\t",
                       na_values="n/a")
    for col in ("global_signal", "csf", "white_matter", "framewise_displacement",
                "trans_x_derivative1_power2", "w_comp_cor_04", "c_comp_cor_04"):
        assert col in conf.columns, col
    assert len(conf) == 156
    from neuroscale.bids.confounds import load_confounds

    regressors, names = load_confounds(func / f"{PREFIX}_desc-confounds_timeseries.tsv", "36P")
    assert regressors.shape == (156, 36) and np.isfinite(regressors).all()
    qc = json.loads((func / f"{PREFIX}_desc-qc_bold.json").read_text())
    fd = motion["framewise_displacement"].fillna(0).to_numpy()
    assert qc["fd_mean"] == pytest.approx(fd[1:].mean(), rel=1e-4)
    assert qc["n_volumes_kept"] == int((fd <= 0.5).sum())
    assert len(qc["traces"]["framewise_displacement"]) == 156
    assert qc["t1w_to_template_dice"] >= 0.9
    # AAL labels grey matter only (0.74 of the template's brain mask): >= 90 % of the GM in
    # the EPI mask, and the whole EPI mask up to that ceiling
    assert qc["atlas_aal_gm_coverage"] >= 0.9
    assert qc["atlas_aal_mask_coverage"] >= 0.74 - 0.05
    for name in ("sub-02_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
                 "sub-02_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5",
                 "sub-02_desc-brain_mask.nii.gz", "sub-02_dseg.nii.gz"):
        assert (anat / name).is_file(), name
    assert (func / f"{PREFIX}_from-boldref_to-T1w_mode-image_xfm.txt").is_file()
    html = (out / "sub-02.html").read_text()
    assert "Registration" in html and "FD (mm)" in html
    assert "T1w" in html and "MNI152NLin2009cAsym" in html


@pytest.mark.slow
def test_rerun_skips_and_changed_parameter_recomputes_only_what_it_touches(
    participant_run: tuple[Path, Path, int],
) -> None:
    from neuroscale.bids.layout import find_bold_runs
    from neuroscale.pipelines.participant import ParticipantConfig, run_participant

    out, work, _ = participant_run
    config = ParticipantConfig(atlases=[ATLAS], seeds=[(0, -66, 3, 8)], work_dir=work,
                               progress=False, report=False)
    runs = find_bold_runs(EXAMPLE)
    xfm = out / "sub-02" / "anat" / "sub-02_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"
    mtime = xfm.stat().st_mtime_ns
    again = run_participant(EXAMPLE, out, config)
    assert xfm.stat().st_mtime_ns == mtime  # the registration is reused
    assert "motion" in again[0].skipped
    assert again[0].error is None
    assert again[0].computed == [], again[0].computed
    assert len(runs) == 1
    config.dc_threshold = 0.3
    changed = run_participant(EXAMPLE, out, config)[0]
    assert sorted(changed.computed) == ["dcb", "dcw"], changed.computed


@pytest.mark.slow
def test_group_level(participant_run: tuple[Path, Path, int]) -> None:
    out, _, _ = participant_run
    assert main([str(EXAMPLE), str(out), "group"]) == 0
    table = pd.read_csv(out / "group_bold_qc.tsv", sep="\t")
    assert len(table) == 1
    assert any(c.endswith("_outlier") for c in table.columns)
    assert (out / "group.html").is_file()
    assert list(out.glob("group_atlas-aal_*relmat.tsv"))


@pytest.mark.slow
def test_without_t1w_falls_back_to_epi_only(tmp_path: Path) -> None:
    """No T1w: motion correction still runs, the MNI atlas is not used and the tissue
    confounds fall back, each with a clear warning in the outcome and the report."""
    from neuroscale.pipelines.participant import ParticipantConfig, run_participant

    ds = _copy_example(tmp_path)
    shutil.rmtree(ds / "sub-02" / "anat")
    bold = ds / "sub-02" / "func" / f"{PREFIX}_bold.nii.gz"
    img = nib.load(bold)  # the first 60 volumes of the real run keep the test short
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj[..., :60]), img.affine, img.header), bold)
    config = ParticipantConfig(atlases=[ATLAS], work_dir=tmp_path / "work", progress=False,
                               centrality=False)
    outcome = run_participant(ds, tmp_path / "out", config)[0]
    assert outcome.error is None, outcome.error
    text = " ".join(outcome.warnings)
    assert "no T1w" in text and "aal.nii.gz not used" in text and "36P" in text
    func = tmp_path / "out" / "sub-02" / "func"
    assert (func / f"{PREFIX}_desc-motion_timeseries.tsv").is_file()
    assert not list(func.glob("*atlas-aal*"))
    assert outcome.outputs["reho"].is_file()
    assert "no T1w" in (tmp_path / "out" / "sub-02.html").read_text()


def test_not_a_bids_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    code = main([str(tmp_path / "data"), str(tmp_path / "out"), "participant"])
    assert code != 0
    err = capsys.readouterr().err
    assert "error" in err and "data" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_no_bold_for_participant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(EXAMPLE), str(tmp_path / "out"), "participant", "--participant-label", "99"])
    assert code != 0
    assert "99" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _copy_example(tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(EXAMPLE, dst)
    return dst


def test_missing_tr_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = tmp_path / "ds"
    (ds / "sub-01" / "func").mkdir(parents=True)
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.8.0"}))
    img = nib.Nifti1Image(np.random.default_rng(0).normal(100, 1, (8, 8, 6, 20)).astype(np.float32),
                          np.eye(4))
    img.header.set_zooms((3, 3, 3, 0))
    nib.save(img, ds / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    code = main([str(ds), str(tmp_path / "out"), "participant", "--n-workers", "1",
                 "--no-progress"])
    assert code != 0
    err = capsys.readouterr()
    assert "repetition time" in (err.err + err.out).lower()
    assert not list((tmp_path / "out").rglob("*.nii.gz"))


def test_cli_entry_point_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "neuroscale.cli.main", "--help"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "participant" in result.stdout and "--scheduler" in result.stdout


def test_derivatives_registered_in_catalog(tmp_path: Path) -> None:
    """--catalog: each derivative is catalogued with its source's checksum (lineage to raw)."""
    pytest.importorskip("sqlalchemy")
    import hashlib

    from neuroscale.testing import write_synthetic_bold

    ds = tmp_path / "ds"
    func = ds / "sub-01" / "func"
    func.mkdir(parents=True)
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "s", "BIDSVersion": "1.8.0"}))
    bold = func / "sub-01_task-rest_bold.nii.gz"
    write_synthetic_bold(bold, shape=(16, 18, 12, 60), seed=4)
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    assert main(["catalog", "init", "--url", url, "--store", str(tmp_path / "store")]) == 0
    out = tmp_path / "out"
    assert main([str(ds), str(out), "participant", "--catalog", url, "--no-report",
                 "--no-progress", "--n-workers", "1"]) == 0
    alff = out / "sub-01" / "func" / "sub-01_task-rest_stat-alff_boldmap.nii.gz"
    from neuroscale.catalog import Catalog

    lineage = Catalog(url).lineage(alff)
    text = repr(lineage)
    assert hashlib.sha256(bold.read_bytes()).hexdigest() in text


@pytest.fixture(scope="module")
def epi_only_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The whole example without registration or motion correction, AAL taken as a
    BOLD-space label image (``--atlas-space bold``): a run whose denoising nilearn can redo."""
    out = tmp_path_factory.mktemp("epi") / "out"
    code = main([str(EXAMPLE), str(out), "participant", "--atlas", str(ATLAS),
                 "--atlas-space", "bold", "--seed", SEED, "--no-registration",
                 "--no-motion-correction", "--no-centrality", "--no-report", "--no-progress",
                 "--n-workers", "2", "--memory-limit", "3GB"])
    return out, code


def _nilearn_denoised(out: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict]:
    """The run denoised by nilearn alone, *unstandardised*, with the confounds neuroscale
    applied (read back from its confounds TSV and the regressor names in its sidecar)."""
    from nilearn.masking import apply_mask, unmask
    from nilearn.signal import clean

    from neuroscale.bids.confounds import load_confounds

    func = out / "sub-02" / "func"
    mask_img = nib.load(func / f"{PREFIX}_desc-brain_mask.nii.gz")
    sidecar = json.loads((func / f"{PREFIX}_atlas-aal_stat-mean_timeseries.json").read_text())
    names = sidecar["ConfoundRegressors"]
    conf, got_names = load_confounds(func / f"{PREFIX}_desc-confounds_timeseries.tsv",
                                     strategy=[f"^{n}$" for n in names])
    assert got_names == names
    bold = nib.load(EXAMPLE / "sub-02" / "func" / f"{PREFIX}_bold.nii.gz")
    x = apply_mask(nib.Nifti1Image(np.asarray(bold.dataobj, dtype=np.float32), bold.affine),
                   mask_img)
    den = clean(x.astype(np.float64), detrend=True, standardize=None, confounds=conf,
                standardize_confounds=True, filter="butterworth", low_pass=0.1,
                high_pass=0.01, t_r=2.0)
    return unmask(den.astype(np.float32), mask_img), mask_img, sidecar


@pytest.mark.slow
def test_parcel_and_seed_signals_follow_nilearn_maskers(epi_only_run: tuple[Path, int]) -> None:
    """Parcel (seed) series are the mean of the denoised, unstandardised voxels: nilearn's
    NiftiLabelsMasker (NiftiSpheresMasker) on the denoised image, as XCP-D; without
    registration the confounds fall back to the global signal + expansions, said loudly."""
    import warnings

    from nilearn.maskers import NiftiLabelsMasker, NiftiSpheresMasker

    out, code = epi_only_run
    assert code == 0
    func = out / "sub-02" / "func"
    den_img, mask_img, sidecar = _nilearn_denoised(out)
    assert sidecar["NuisanceStrategyApplied"] == "GS4"
    assert "no motion correction" in sidecar["NuisanceStrategyFallback"]
    assert sidecar["Parameters"]["partial_correlation"]["zscored_before_estimation"] is True
    ours = pd.read_csv(func / f"{PREFIX}_atlas-aal_stat-mean_timeseries.tsv", sep="\t",
                       na_values="n/a")
    masker = NiftiLabelsMasker(labels_img=str(ATLAS), mask_img=mask_img, strategy="mean",
                               standardize=None, resampling_target="data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # labels outside the mask
        ref = masker.fit_transform(den_img)
    ids = [v for k, v in masker.region_ids_.items() if k != "background"]
    values = np.unique(np.asarray(nib.load(ATLAS).dataobj))
    cols = np.searchsorted(values[values > 0], ids)
    got = ours.to_numpy()[:, cols]
    assert got.shape == ref.shape and len(ids) > 50
    scale = np.abs(ref).max(axis=0)
    np.testing.assert_allclose(got / scale, ref / scale, rtol=0, atol=1e-4)
    pearson = pd.read_csv(func / f"{PREFIX}_atlas-aal_stat-pearsoncorrelation_relmat.tsv",
                          sep="\t", index_col="Node", na_values="n/a").to_numpy()[np.ix_(cols, cols)]
    np.testing.assert_allclose(pearson, np.corrcoef(ref.T), atol=1e-4)
    # the seed: NiftiSpheresMasker's mean of the denoised voxels, correlated with every voxel
    x, y, z, radius = (float(v) for v in SEED.split(","))
    seed_ts = NiftiSpheresMasker([(x, y, z)], radius=radius, mask_img=mask_img,
                                 standardize=None).fit_transform(den_img)[:, 0]
    mask = np.asarray(mask_img.dataobj) > 0
    vox = np.asarray(den_img.dataobj)[mask].astype(np.float64)
    s = seed_ts - seed_ts.mean()
    c = vox - vox.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (c @ s) / np.sqrt((c**2).sum(axis=1) * (s @ s))
    expected = np.arctanh(np.clip(np.nan_to_num(r), -(1 - 1e-7), 1 - 1e-7))
    seed_map = np.asarray(nib.load(func / f"{PREFIX}_seed-1_stat-fisherz_boldmap.nii.gz")
                          .dataobj)[mask]
    np.testing.assert_allclose(seed_map, expected, atol=2e-4)
