"""Head-motion correction (neuroscale.preproc.motion): accuracy on real volumes with known motion,
FD, the motion .tsv, laziness, the distributed scheduler and incomplete stores."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest
from tests.utils import block_mean, raise_if_dask_computes

from neuroscale import open_image
from neuroscale.errors import AnalysisError, ImageFormatError
from neuroscale.preproc import motion
from neuroscale.preproc.motion import (
    MARKER,
    apply_rigid_motion,
    framewise_displacement,
    grid_center,
    matrix_to_params,
    open_realigned,
    read_realigned,
    realign,
    rigid_matrix,
    select_reference,
    write_motion_tsv,
)

DEG = np.pi / 180.0
N_DUMMY = 2  # leading volumes skipped for the reference in these tests


def _known_motions() -> np.ndarray:
    """Identity, each axis alone at a small and at the largest motion, and a combination."""
    cases = [np.zeros(6)]
    for axis in range(6):
        for size in (0.4, 3.0):  # mm or degrees
            p = np.zeros(6)
            p[axis] = size if axis < 3 else size * DEG
            cases.append(p)
    cases.append(np.array([2.0, -3.0, 1.5, -2.5 * DEG, 3.0 * DEG, 1.8 * DEG]))
    return np.array(cases)


@pytest.fixture(scope="module")
def real_run(studyforrest_bold: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real studyforrest run opened as a working copy, and its reference volume."""
    cache = tmp_path_factory.mktemp("motion-cache")
    image = open_image(studyforrest_bold, cache_dir=cache)
    reference = select_reference(image, n_dummy=N_DUMMY, n_volumes=10)
    return image, reference


@pytest.fixture(scope="module")
def moved_run(real_run, tmp_path_factory: pytest.TempPathFactory):
    """A 4D run made of the real reference volume moved by known motions, plus noise at the
    run's own temporal noise level; realigned once (threaded scheduler)."""
    image, reference = real_run
    tmp = tmp_path_factory.mktemp("motion-run")
    truth = _known_motions()
    # the real run's temporal noise in the brain, from the same volumes as the reference
    raw, slope, inter = image._raw({0: -1, 1: -1, 2: -1, 3: -1})
    vols = np.asarray(raw[N_DUMMY:N_DUMMY + 10].compute(), np.float32) * slope + inter
    brain = reference > np.percentile(reference, 70)
    sigma = float(np.median(vols.std(axis=0)[brain]))
    rng = np.random.default_rng(20120201)
    frames = [apply_rigid_motion(reference, image.affine, p)
              + rng.normal(0.0, sigma, reference.shape).astype(np.float32) for p in truth]
    data = np.stack(frames, axis=-1).astype(np.float32)
    path = tmp / "sub-01_task-moved_bold.nii.gz"
    nii = nib.Nifti1Image(data, image.affine)
    nii.header.set_xyzt_units("mm", "sec")
    nii.header["pixdim"][4] = 2.0
    nib.save(nii, path)
    moved = open_image(path, cache_dir=tmp / "cache")
    # the first 4 volumes again, for the distributed run (kept short)
    short = nib.Nifti1Image(data[..., :4], image.affine, nii.header)
    nib.save(short, tmp / "sub-01_task-short_bold.nii.gz")
    moved_short = open_image(tmp / "sub-01_task-short_bold.nii.gz", cache_dir=tmp / "cache")
    graph = realign(moved, tmp / "realigned.zarr", reference, volumes_per_task=4)
    params, mean = dask.compute(graph.params, graph.mean, scheduler="threads")
    return {"image": moved, "short": moved_short, "reference": reference, "truth": truth, "data": data,
            "graph": graph, "params": params, "mean": mean, "tmp": tmp}


# ----------------------------------------------------------------------- conventions


def test_rigid_matrix_round_trip() -> None:
    center = np.array([1.5, -20.0, 12.0])
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.r_[rng.uniform(-5, 5, 3), rng.uniform(-10, 10, 3) * DEG]
        m = rigid_matrix(p, center)
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
        # the grid centre moves by the translation exactly
        np.testing.assert_allclose(m[:3, :3] @ center + m[:3, 3], center + p[:3], atol=1e-12)
        np.testing.assert_allclose(matrix_to_params(m, center), p, atol=1e-12)
    # Euler order R = Rx Ry Rz: a pure rot_z turns +x towards +y
    m = rigid_matrix(np.r_[0, 0, 0, 0, 0, 90 * DEG], np.zeros(3))
    np.testing.assert_allclose(m[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_ants_transform_conversion() -> None:
    """An ITK affine transform in LPS maps points as our RAS matrix does (after flipping)."""
    import ants

    center_ras = np.array([3.0, -17.0, 8.0])
    p = np.array([1.2, -0.7, 2.1, 2.0 * DEG, -1.5 * DEG, 2.5 * DEG])
    m_ras = rigid_matrix(p, center_ras)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    m_lps = flip @ m_ras @ flip
    c_lps = flip[:3, :3] @ center_ras
    # ITK: x -> A (x - c) + c + t
    translation = m_lps[:3, 3] + m_lps[:3, :3] @ c_lps - c_lps
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", precision="double", dimension=3,
        matrix=m_lps[:3, :3], center=c_lps, translation=translation)
    back = motion.ants_transform_to_matrix(tx.parameters, tx.fixed_parameters)
    np.testing.assert_allclose(back, m_ras, atol=1e-5)
    point_ras = np.array([10.0, 20.0, -5.0])
    moved_lps = np.asarray(tx.apply_to_point(tuple(flip[:3, :3] @ point_ras)))
    np.testing.assert_allclose(flip[:3, :3] @ moved_lps, (m_ras @ np.r_[point_ras, 1])[:3],
                               atol=1e-5)


def test_apply_rigid_motion_translates_by_whole_voxels() -> None:
    vol = np.zeros((20, 20, 20), np.float32)
    vol[8:12, 8:12, 8:12] = 1.0
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    moved = apply_rigid_motion(vol, affine, np.array([6.0, 0, 0, 0, 0, 0]), order=1)
    np.testing.assert_allclose(moved, np.roll(vol, 2, axis=0), atol=1e-6)


# ----------------------------------------------------------------------- FD and tsv


def test_framewise_displacement_by_hand() -> None:
    params = np.array([
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.1, -0.2, 0.3, 0.01, 0.0, -0.02],
        [0.1, -0.2, 0.3, 0.01, 0.0, -0.02],
        [-0.4, 0.0, 0.3, 0.0, 0.005, -0.02],
    ])
    # |0.1|+|-0.2|+|0.3| + 50*(0.01+0+0.02) = 0.6 + 1.5; then 0; then 0.5+0.2+0 + 50*(0.01+0.005)
    expected = np.array([0.0, 2.1, 0.0, 0.7 + 0.75])
    np.testing.assert_allclose(framewise_displacement(params), expected, atol=1e-12)
    np.testing.assert_allclose(framewise_displacement(params, radius_mm=80.0)[1],
                               0.6 + 80 * 0.03, atol=1e-12)
    with pytest.raises(AnalysisError):
        framewise_displacement(params[:, :5])


def test_write_motion_tsv(tmp_path: Path) -> None:
    params = np.array([[0.0, 0.1, -0.2, 0.001, 0.0, -0.002], [0.05, 0.1, -0.25, 0.0, 0.0, 0.0]])
    fd = framewise_displacement(params)
    path = tmp_path / "sub-01_desc-motion_timeseries.tsv"
    write_motion_tsv(path, params, fd)
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                                    "framewise_displacement"]
    assert lines[1].split("\t")[-1] == "n/a"
    table = np.array([[float(v) for v in line.split("\t")[:6]] for line in lines[1:]])
    np.testing.assert_allclose(table, params, rtol=1e-5)
    assert float(lines[2].split("\t")[-1]) == pytest.approx(fd[1], rel=1e-5)
    write_motion_tsv(tmp_path / "nofd.tsv", params)
    assert (tmp_path / "nofd.tsv").read_text().splitlines()[0].count("\t") == 5
    assert not list(tmp_path.glob(".tmp-*"))


# ----------------------------------------------------------------------- reference


def test_select_reference_is_median_of_chosen_volumes(real_run, studyforrest_bold) -> None:
    image, reference = real_run
    nii = nib.load(studyforrest_bold)
    expected = np.median(np.asarray(nii.dataobj[..., N_DUMMY:N_DUMMY + 10], np.float32), axis=3)
    assert reference.dtype == np.float32 and reference.shape == image.shape[:3]
    np.testing.assert_allclose(reference, expected, rtol=1e-5, atol=1e-3)
    with pytest.raises(AnalysisError):
        select_reference(image, n_dummy=image.n_volumes)


# ----------------------------------------------------------------------- laziness, stores


def test_realign_is_lazy_one_task_per_chunk(real_run, tmp_path: Path) -> None:
    image, reference = real_run
    with raise_if_dask_computes():
        graph = realign(image, tmp_path / "r.zarr", reference, volumes_per_task=10)
    n_chunks = -(-image.n_volumes // 10)
    assert graph.n_tasks == n_chunks
    keys = dict(graph.params.__dask_graph__()).keys()
    reg_tasks = [k for k in keys if str(k).startswith("realign-block-")]
    assert len(reg_tasks) == n_chunks
    # params and mean share the same registration tasks
    mean_keys = dict(graph.mean.__dask_graph__()).keys()
    assert {k for k in mean_keys if str(k).startswith("realign-block-")} == set(reg_tasks)
    # nothing written but the empty array; the store is not complete
    assert not (tmp_path / "r.zarr" / MARKER).exists()
    assert read_realigned(tmp_path / "r.zarr") is None
    with pytest.raises(ImageFormatError, match="incomplete"):
        open_realigned(tmp_path / "r.zarr", image)
    with pytest.raises(AnalysisError):
        realign(image, tmp_path / "bad.zarr", reference[:-1])


# ----------------------------------------------------------------------- accuracy


@pytest.mark.slow
def test_recovers_known_motion_within_tolerance(moved_run) -> None:
    params, truth = moved_run["params"], moved_run["truth"]
    assert params.shape == (truth.shape[0], 6) and params.dtype == np.float64
    err = np.abs(params - truth)
    assert err[:, :3].max() < 0.1, f"translation errors (mm):\n{np.round(err[:, :3], 3)}"
    assert err[:, 3:].max() < 0.1 * DEG, f"rotation errors (deg):\n{np.round(err[:, 3:] / DEG, 3)}"
    # FD of the recovered parameters follows the known one
    np.testing.assert_allclose(framewise_displacement(params), framewise_displacement(truth),
                               atol=0.6)


@pytest.mark.slow
def test_realigned_run_matches_reference(moved_run) -> None:
    image, reference = moved_run["image"], moved_run["reference"]
    graph = moved_run["graph"]
    realigned = open_realigned(graph.store, image, moved_run["mean"])
    assert realigned.shape == image.shape and realigned.meta["store"] == str(graph.store)
    assert realigned.meta["sha256"] == image.meta["sha256"]
    # brain voxels away from the edge of the field of view (the largest motions move some of
    # the volume out of it)
    brain = reference > np.percentile(reference, 70)
    brain[:, :, :4] = brain[:, :, -4:] = False
    brain[:6] = brain[-6:] = False
    brain[:, :6] = brain[:, -6:] = False
    series = realigned.to_series(brain).data.compute()  # (t, voxel), as downstream reads it
    moved_series = moved_run["data"][brain].T
    ref_values = reference[brain]
    scale = float(ref_values.mean())
    for t, p in enumerate(moved_run["truth"]):
        after = np.sqrt(np.mean((series[t] - ref_values) ** 2)) / scale
        before = np.sqrt(np.mean((moved_series[t] - ref_values) ** 2)) / scale
        assert after < 0.08, (t, after)  # rot_x 3 deg: 0.054 (slices leave the FOV)
        if np.abs(p).max() > 0:  # noise dominates `before` for the small motions
            assert after < before, (t, after, before)
        if np.abs(p[:3]).max() >= 3.0 or np.abs(p[3:]).max() >= 3.0 * DEG:
            assert after < 0.6 * before, (t, after, before)
    # the mean returned by the graph is the mean of the stored volumes
    full = np.asarray(realigned.data.compute())
    np.testing.assert_allclose(moved_run["mean"], full.mean(axis=3), rtol=1e-4, atol=1e-2)
    stored = read_realigned(graph.store)
    assert stored is not None
    np.testing.assert_array_equal(stored[0], moved_run["params"])


@pytest.mark.slow
def test_distributed_cluster_gives_same_parameters(moved_run) -> None:
    import dask.config
    from dask.distributed import Client, LocalCluster

    image, reference = moved_run["short"], moved_run["reference"]
    # ITK reads its thread count once per process, and the metric's sums depend on it: the
    # workers get one ITK thread each (as neuroscale's LocalCluster gives them)
    env = {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    results = []
    for n_workers, per_task in ((1, 4), (2, 2)):
        store = moved_run["tmp"] / f"realigned-distributed-{n_workers}.zarr"
        graph = realign(image, store, reference, volumes_per_task=per_task)
        assert graph.n_tasks == 4 // per_task
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}), \
                LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                             dashboard_address=":0") as cluster, Client(cluster) as client:
            results.append(client.compute([graph.params, graph.mean], sync=True))
    params, mean = results[1]
    # the same volumes, in other task blocks, on other processes: the same parameters
    np.testing.assert_allclose(params, results[0][0], atol=1e-6)
    # and the same as the in-process run up to ITK's thread count (summation order)
    np.testing.assert_allclose(params, moved_run["params"][:4], atol=0.02)
    realigned = open_realigned(store, image, mean)
    np.testing.assert_allclose(mean, np.asarray(realigned.data.compute()).mean(axis=3),
                               rtol=1e-4, atol=1e-2)
    assert json.loads((store / MARKER).read_text())["complete"] is True


@pytest.mark.slow
def test_half_written_store_is_not_opened(moved_run, tmp_path: Path) -> None:
    import shutil

    image = moved_run["image"]
    copy = tmp_path / "copy.zarr"
    shutil.copytree(moved_run["graph"].store, copy)
    open_realigned(copy, image)  # complete: opens
    (copy / MARKER).unlink()  # as if the run stopped before the last task
    with pytest.raises(ImageFormatError, match="incomplete"):
        open_realigned(copy, image)
    # rebuilding a graph onto a complete store removes its marker at once
    shutil.copytree(moved_run["graph"].store, tmp_path / "again.zarr")
    realign(image, tmp_path / "again.zarr", moved_run["reference"], volumes_per_task=4)
    assert read_realigned(tmp_path / "again.zarr") is None


def test_grid_center_is_voxel_centre() -> None:
    affine = np.array([[-3.0, 0, 0, 100], [0, 3.0, 0, -50], [0, 0, 3.3, -20], [0, 0, 0, 1]])
    np.testing.assert_allclose(grid_center(affine, (80, 80, 35)),
                               [100 - 3 * 39.5, -50 + 3 * 39.5, -20 + 3.3 * 17])


# ----------------------------------------------------------------------- coarse grids, voxel order


def _reordered(data: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int],
               flip: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The same image in world space with its voxel axes permuted (and one flipped)."""
    out = np.transpose(data, (*perm, 3))
    new = affine.copy()
    new[:, :3] = affine[:, list(perm)]
    if flip is not None:
        out = np.flip(out, axis=flip)
        new[:3, 3] = new[:3, 3] + new[:3, flip] * (out.shape[flip] - 1)
        new[:3, flip] = -new[:3, flip]
    return np.ascontiguousarray(out), new


def _realign_array(data: np.ndarray, affine: np.ndarray, tmp: Path, name: str,
                   settings: dict | None = None) -> tuple[np.ndarray, np.ndarray, object]:
    path = tmp / f"sub-01_task-{name}_bold.nii.gz"
    nii = nib.Nifti1Image(data, affine)
    nii.header.set_xyzt_units("mm", "sec")
    nii.header["pixdim"][4] = 2.0
    nib.save(nii, path)
    image = open_image(path, cache_dir=tmp / f"cache-{name}")
    reference = select_reference(image, n_dummy=0, n_volumes=10)
    graph = realign(image, tmp / f"{name}.zarr", reference, settings=settings)
    params, qc = dask.compute(graph.params, graph.qc, scheduler="sync")
    return params, qc, graph


@pytest.fixture(scope="module")
def real_block(studyforrest_bold: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 40 volumes of the real run (float32, scaled) and its affine."""
    nii = nib.load(studyforrest_bold)
    return np.asarray(nii.dataobj[..., :40], dtype=np.float32), nii.affine


def test_registration_schedule_adapts_to_the_grid() -> None:
    default = motion.REGISTRATION_SETTINGS
    native = motion.registration_schedule((80, 80, 35))
    assert native == default  # studyforrest: 224,000 voxels, 15 % sample, 2x shrink kept
    # a 2x block mean (40 x 40 x 17): a 2x shrink would leave 3,600 voxels, so that level is
    # dropped, and the sample is raised to min_samples points of the 27,200
    mid = motion.registration_schedule((40, 40, 17))
    assert mid["metric"] == "Mattes" and mid["shrink_factors"] == (1,)
    assert mid["iterations"] == (100,) and mid["smoothing_sigmas_vox"] == (0,)
    assert mid["sampling_percentage"] * 40 * 40 * 17 == pytest.approx(default["min_samples"])
    # 25 mm voxels (10 x 10 x 4): every voxel, least squares, one level
    coarse = motion.registration_schedule((10, 10, 4))
    assert coarse["metric"] == "MeanSquares" and coarse["sampling_percentage"] == 1.0
    assert coarse["shrink_factors"] == (1,) and coarse["iterations"] == (100,)
    # only the number of voxels counts: any axis order gets the same schedule
    assert motion.registration_schedule((4, 10, 10)) == coarse
    assert motion.registration_schedule((17, 40, 40)) == mid


def test_coarse_voxels_give_plausible_estimates(real_block, tmp_path: Path) -> None:
    """The real run block-averaged to 24 x 24 x 26.4 mm voxels (10 x 10 x 4): estimates stay
    at the native run's scale (below 0.2 mm there); with the fixed schedule they reached
    5.7 mm / 0.064 rad on the permuted copy and FD censoring removed most volumes."""
    data, affine = block_mean(*real_block, target_mm=25.0)
    assert data.shape[:3] == (10, 10, 4)
    params, qc, graph = _realign_array(data, affine, tmp_path, "coarse")
    assert graph.settings["metric"] == "MeanSquares"
    assert np.abs(params[:, :3]).max() < 0.5  # mm, 2 % of a voxel
    assert np.abs(params[:, 3:]).max() < 0.005  # rad (0.3 degree)
    fd = framewise_displacement(params)
    assert (fd <= 0.5).mean() >= 0.95  # nearly nothing censored at fMRIPrep's 0.5 mm
    assert qc.shape == (data.shape[3], len(motion.QC_COLUMNS))
    assert (qc[:, 3] == 0).mean() >= 0.9  # the first estimate is kept almost always
    # the same image with its axes permuted and one flipped: the same estimates
    moved, moved_affine = _reordered(data, affine, (2, 0, 1), flip=1)
    params_p, _, _ = _realign_array(moved, moved_affine, tmp_path, "coarseperm")
    fd_p = framewise_displacement(params_p)
    assert np.corrcoef(fd[1:], fd_p[1:])[0, 1] >= 0.95
    assert np.abs(params_p[:, :3] - params[:, :3]).max() < 0.005


@pytest.mark.slow
def test_permuted_copy_gives_the_same_estimates(real_block, tmp_path: Path) -> None:
    """At 6 x 6 x 6.6 mm (40 x 40 x 17) with Mattes MI on a regular jittered sample, the path
    whose sample points followed the voxel order (FD r 0.83, translations +-0.04 mm between the
    native run and its permuted copy before): a permuted copy gives the original's estimates
    exactly, a flipped one (its shifted origin rounded to float32 in the sform) to < 0.02 mm
    and 5e-4 rad.
    A smaller sample and fewer iterations than the defaults keep the test short."""
    data, affine = block_mean(real_block[0][..., :8], real_block[1], target_mm=6.0)
    settings = {**motion.REGISTRATION_SETTINGS, "min_samples": 4000, "iterations": (40, 20)}
    params, _, graph = _realign_array(data, affine, tmp_path, "orig", settings)
    assert graph.settings["metric"] == "Mattes" and graph.settings["sampling_percentage"] < 1
    fd = framewise_displacement(params)
    for k, (perm, flip) in enumerate((((1, 2, 0), None), ((2, 1, 0), 0))):
        moved, moved_affine = _reordered(data, affine, perm, flip)
        other, _, _ = _realign_array(moved, moved_affine, tmp_path, f"perm{k}", settings)
        if flip is None:
            np.testing.assert_array_equal(other, params)
        fd_o = framewise_displacement(other)
        assert np.corrcoef(fd[1:], fd_o[1:])[0, 1] >= 0.95, k
        assert np.abs(other[:, :3] - params[:, :3]).max() < 0.02, k
        assert np.abs(other[:, 3:] - params[:, 3:]).max() < 5e-4, k  # rad; 0.025 mm at 50 mm


def test_implausible_estimates_fall_back_then_refuse(real_block, tmp_path: Path) -> None:
    """The check itself: an estimate that moves the brain without improving its match is
    rejected; with thresholds no estimate can meet, every volume falls back to the identity
    and the run is refused with one AnalysisError naming the file (no completion marker)."""
    data, affine = block_mean(real_block[0][..., :12], real_block[1], target_mm=25.0)
    ref = np.median(data, axis=3)
    bright = ref > ref.mean()
    corners = np.array([[x, y, z, 1.0] for x in (0, 9) for y in (0, 9) for z in (0, 3)]).T
    corners_mm = affine @ corners
    center = grid_center(affine, ref.shape)
    settings = motion.REGISTRATION_SETTINGS
    vol = data[..., 5]
    # a 12 mm "estimate" for a volume that did not move, realigned as ANTs would (linear)
    wrong = np.array([12.0, 0, 0, 0, 0, 0])
    warped = apply_rigid_motion(vol, affine, -wrong, order=1)
    ok, before, after, disp = motion._check_estimate(ref, bright, corners_mm, vol, warped, wrong,
                                                     center, 24.0, settings)
    assert not ok and after > before and disp == pytest.approx(12.0)
    ok, *_ = motion._check_estimate(ref, bright, corners_mm, vol, vol, np.zeros(6), center,
                                    24.0, settings)
    assert ok
    # nothing passes: all volumes identity -> refused
    strict = {**settings, "max_shift_voxels": 0.0, "min_residual_gain": 1.0}
    with pytest.raises(AnalysisError, match=r"implausible for \d+ of 12 volumes") as info:
        _realign_array(data, affine, tmp_path, "strict", settings=strict)
    assert "task-strict_bold" in str(info.value) and "--no-motion-correction" in str(info.value)
    assert read_realigned(tmp_path / "strict.zarr") is None


def test_qc_report_names_fallbacks() -> None:
    qc = np.zeros((5, len(motion.QC_COLUMNS)))
    qc[1, 3], qc[3, 3] = 1, 2
    summary, warnings = motion.qc_report(qc, source="/x/sub-01_task-a_bold.nii.gz")
    assert summary["volumes_reestimated"] == [1] and summary["volumes_identity"] == [3]
    assert len(warnings) == 2 and all("sub-01_task-a_bold.nii.gz" in w for w in warnings)
    json.dumps(summary)
    assert motion.qc_report(np.zeros((3, 4)))[1] == []
