"""Clusters: profiles of the Dask config, batch job scripts, and failures of the cluster."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import dask.config
import nibabel as nib
import numpy as np
import pytest

from neuroscale.compute import config as nsconfig
from neuroscale.compute.cluster import (
    build_jobqueue_cluster,
    cluster_client,
    compute_error,
    compute_with_progress,
    describe_failure,
    is_cluster_failure,
)
from neuroscale.compute.config import (
    ClusterProfile,
    available_profiles,
    parse_adaptive,
    profile_from_mapping,
    resolve_profile,
)
from neuroscale.errors import AnalysisError, ComputeError, ConfigurationError, NeuroscaleError

SLURM_PROFILE = {
    "type": "slurm",
    "queue": "gpu-long",
    "account": "neurolab",
    "cores": 8,
    "memory": "32GB",
    "processes": 2,
    "walltime": "04:30:00",
    "jobs": 3,
    "job-extra-directives": ["--exclusive"],
    "job_script_prologue": ["module load python/3.11"],
}


# -- profiles -------------------------------------------------------------------------------
def test_shipped_default_profile_is_valid_and_merged() -> None:
    nsconfig.load_default_config()
    raw = dask.config.get("neuroscale.profiles.example-slurm")
    assert raw["type"] == "slurm"
    profiles = available_profiles()
    example = profiles["example-slurm"]
    assert example.kind == "slurm" and example.is_batch
    assert (example.cores, example.memory, example.processes, example.jobs) == (8, "32GB", 2, 4)
    assert example.walltime == "04:00:00" and example.account is None


def test_user_profile_from_dask_config_and_flags_override() -> None:
    with dask.config.set({"neuroscale.profiles.hpc": SLURM_PROFILE}):
        profile = resolve_profile("hpc")
        assert profile == ClusterProfile(
            name="hpc", kind="slurm", queue="gpu-long", account="neurolab", cores=8,
            memory="32GB", processes=2, walltime="04:30:00", jobs=3,
            job_extra_directives=("--exclusive",),
            job_script_prologue=("module load python/3.11",))
        # the shipped example is still there beside the user's
        assert "example-slurm" in available_profiles()
    over = profile.with_overrides(queue="short", cores=4, adaptive=(0, 5), memory=None)
    assert (over.queue, over.cores, over.adaptive, over.memory) == ("short", 4, (0, 5), "32GB")
    with pytest.raises(ConfigurationError, match="^--cores: expected an integer >= 1, got 0"):
        profile.with_overrides(cores=0)
    # bare kinds without a profile; unknown names list what exists
    assert resolve_profile("slurm") == ClusterProfile(name="slurm", kind="slurm")
    assert resolve_profile("local").kind == "local"
    with pytest.raises(ConfigurationError, match="no such cluster profile.*example-slurm"):
        resolve_profile("nope")


def test_profile_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """DASK_NEUROSCALE__PROFILES__... as a user would export them (values are literals)."""
    monkeypatch.setenv("DASK_NEUROSCALE__PROFILES__ENVHPC__TYPE", "pbs")
    monkeypatch.setenv("DASK_NEUROSCALE__PROFILES__ENVHPC__CORES", "16")
    monkeypatch.setenv("DASK_NEUROSCALE__PROFILES__ENVHPC__JOB_EXTRA_DIRECTIVES", "['-V']")
    nsconfig.load_default_config()
    merged = dask.config.merge(dask.config.config, dask.config.collect_env())  # as refresh()
    with dask.config.set({"neuroscale": merged["neuroscale"]}):
        profile = resolve_profile("envhpc")
        assert "example-slurm" in available_profiles()
    assert (profile.kind, profile.cores, profile.job_extra_directives) == ("pbs", 16, ("-V",))


@pytest.mark.parametrize(("raw", "message"), [
    ({"type": "slurm", "qeue": "x"}, r"neuroscale\.profiles\.bad\.qeue: unknown key"),
    ({"type": "slurm", "cores": "8"}, r"bad\.cores: expected an integer >= 1, got str"),
    ({"type": "slurm", "cores": 0}, r"bad\.cores: expected an integer"),
    ({"type": "slurm", "cores": True}, r"bad\.cores: expected an integer"),
    ({"type": "slurm", "memory": "lots"}, r"bad\.memory: .*invalid memory size"),
    ({"type": "slurm", "adaptive": "5:2"}, r"bad\.adaptive: expected 0 <= MIN <= MAX"),
    ({"type": "slurm", "adaptive": "x"}, r"bad\.adaptive: expected MIN:MAX"),
    ({"type": "slurm", "job-extra-directives": "--exclusive"},
     r"bad\.job-extra-directives: expected a list of strings, got str"),
    ({"type": "slurm", "job-extra-directives": [1]}, r"bad\.job-extra-directives: .*strings"),
    ({"type": "slurm", "n-workers": 2}, r"bad\.n-workers: does not apply to a slurm cluster"),
    ({"type": "local", "queue": "q"}, r"bad\.queue: does not apply to a local cluster"),
    ({"type": "kubernetes"}, r"bad\.type: expected one of local, slurm, pbs, sge"),
    ({"cores": 4}, r"bad\.type: missing"),
    (["slurm"], r"neuroscale\.profiles\.bad: a profile must be a mapping"),
])
def test_invalid_profiles_name_the_key(raw: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        profile_from_mapping("bad", raw)
    # the same through the Dask config
    with dask.config.set({"neuroscale.profiles.bad": raw}):
        with pytest.raises(ConfigurationError, match=message):
            resolve_profile("bad")


def test_parse_adaptive() -> None:
    assert parse_adaptive("0:10") == (0, 10)
    assert parse_adaptive([2, 2]) == (2, 2)
    for bad in ("1", "a:b", "1:0", "0:0", [1.5, 2], "1:2:3"):
        with pytest.raises(ConfigurationError):
            parse_adaptive(bad)


def test_flags_that_do_not_apply_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="--queue: only for batch clusters"):
        with cluster_client(queue="normal", quiet=True):
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="exclusive"):
        with cluster_client("tcp://127.0.0.1:1", cluster="slurm", quiet=True):
            pass  # pragma: no cover
    pytest.importorskip("dask_jobqueue")
    with pytest.raises(ConfigurationError, match="--n-workers: only for a local cluster"):
        with cluster_client(cluster="slurm", n_workers=2, quiet=True):
            pass  # pragma: no cover


def test_local_profile_sizes_the_local_cluster() -> None:
    profile = {"type": "local", "n-workers": 1, "threads-per-worker": 2, "memory-limit": "1GB"}
    with dask.config.set({"neuroscale.profiles.laptop": profile}):
        with cluster_client(cluster="laptop", processes=False, dashboard=False,
                            quiet=True) as client:
            workers = client.scheduler_info()["workers"].values()
            assert [(w["nthreads"], w["memory_limit"]) for w in workers] == [(2, 10**9)]
            assert client.submit(sum, [1, 2]).result() == 3
        # a flag wins over the profile
        with cluster_client(cluster="laptop", threads_per_worker=1, processes=False,
                            dashboard=False, quiet=True) as client:
            assert [w["nthreads"] for w in client.scheduler_info()["workers"].values()] == [1]


# -- batch job scripts (no batch system needed: nothing is submitted) ---------------------------
def test_slurm_job_script_from_profile() -> None:
    pytest.importorskip("dask_jobqueue")
    profile = profile_from_mapping("hpc", SLURM_PROFILE).with_overrides(walltime="01:00:00")
    cluster = build_jobqueue_cluster(profile)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    directives = [line.strip() for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH -J neuroscale" in directives
    assert "#SBATCH -p gpu-long" in directives
    assert "#SBATCH -A neurolab" in directives
    assert "#SBATCH --cpus-per-task=8" in directives
    assert "#SBATCH --mem=30G" in directives or "#SBATCH --mem=32G" in directives
    assert "#SBATCH -t 01:00:00" in directives
    assert "#SBATCH --exclusive" in directives
    assert "module load python/3.11" in script
    # 2 worker processes sharing the job's 8 cores
    assert "--nworkers 2" in script and "--nthreads 4" in script


@pytest.mark.parametrize(("kind", "expected"), [
    ("pbs", ["#PBS -q short", "#PBS -A neurolab", "#PBS -l walltime=02:00:00"]),
    ("sge", ["#$ -q short", "#$ -P neurolab", "#$ -l h_rt=02:00:00"]),
])
def test_pbs_and_sge_job_scripts(kind: str, expected: list[str]) -> None:
    pytest.importorskip("dask_jobqueue")
    profile = profile_from_mapping("x", {"type": kind, "queue": "short", "account": "neurolab",
                                         "cores": 4, "memory": "8GB", "walltime": "02:00:00"})
    cluster = build_jobqueue_cluster(profile)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in expected:
        assert line in script, (line, script)


def test_missing_jobqueue_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import raises ImportError
    with pytest.raises(ConfigurationError, match=r"needs dask-jobqueue.*neuroscale\[cluster\]"):
        build_jobqueue_cluster(resolve_profile("slurm"))
    with pytest.raises(ConfigurationError, match=r"neuroscale\[cluster\]"):
        with cluster_client(cluster="example-slurm", quiet=True):
            pass  # pragma: no cover


def test_batch_cluster_without_submit_command_is_a_compute_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ComputeError, match="'sbatch' is not found"):
        with cluster_client(cluster="example-slurm", account="lab", dashboard=False,
                            quiet=True):
            pass  # pragma: no cover


def test_cli_cluster_flags_reach_cluster_client(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """`--cluster NAME` and the batch flags are passed on (cluster start replaced by a stub)."""
    import contextlib

    from neuroscale.cli import main as cli
    from neuroscale.compute import cluster as cluster_mod
    seen: dict[str, Any] = {}

    @contextlib.contextmanager
    def fake_client(scheduler: Any = None, **kwargs: Any) -> Any:
        seen.update(kwargs, scheduler=scheduler)
        raise ComputeError("stub: no cluster here")
        yield  # pragma: no cover

    monkeypatch.setattr(cluster_mod, "cluster_client", fake_client)
    ds = _bids(tmp_path / "ds", {"01": 11}, shape=(8, 9, 7, 20))
    code = cli.main([str(ds), str(tmp_path / "out"), "participant", "--cluster", "hpc",
                     "--queue", "q1", "--account", "a1", "--cores", "4", "--memory", "8GB",
                     "--walltime", "00:10:00", "--adaptive", "0:6"])
    assert code == ComputeError.exit_code
    assert seen["cluster"] == "hpc" and seen["scheduler"] is None
    assert (seen["queue"], seen["account"], seen["cores"], seen["memory"], seen["walltime"],
            seen["adaptive"], seen["jobs"], seen["threads_per_worker"]) == (
        "q1", "a1", 4, "8GB", "00:10:00", "0:6", None, None)


# -- failures -----------------------------------------------------------------------------------
def _bids(root: Path, subjects: dict[str, int], shape: tuple[int, int, int, int],
          n_volumes: dict[str, int] | None = None) -> Path:
    """A BIDS dataset of synthetic runs (seed per subject; optionally other run lengths)."""
    from neuroscale.testing import write_synthetic_bold

    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "synthetic", "BIDSVersion": "1.8.0"}))
    for sub, seed in subjects.items():
        func = root / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        n_t = (n_volumes or {}).get(sub, shape[3])
        write_synthetic_bold(func / f"sub-{sub}_task-rest_bold.nii.gz",
                             shape=(*shape[:3], n_t), seed=seed)
    return root


def _fake_killed_worker() -> BaseException:
    from distributed import KilledWorker

    return KilledWorker("('clean-alff-abc', 0, 1)", types.SimpleNamespace(address="tcp://w"), 3)


@pytest.mark.parametrize("distributed", [False, True])
def test_mixed_collections_come_back_in_the_order_given(distributed: bool) -> None:
    """dask 2026.8 hands back a delayed's result after every array's when the two are mixed
    (``dask.compute(array, delayed, array)``); the participant pipeline computes its
    denoised store's write (delayed) beside its voxel scales (array) and got them swapped."""
    import dask
    import dask.array as da

    first = da.arange(6, chunks=4)
    written = dask.delayed(sum, pure=True)([1, 2])
    scale = da.ones((2, 5), chunks=(2, 2))
    lazy = [first, written, scale, written, first.sum()]
    if distributed:
        with cluster_client(n_workers=1, threads_per_worker=1, quiet=True) as client:
            out = compute_with_progress(client, lazy, progress=False)
    else:
        out = compute_with_progress(None, lazy, progress=False)
    np.testing.assert_array_equal(out[0], np.arange(6))
    assert out[1] == 3 and out[3] == 3
    np.testing.assert_array_equal(out[2], np.ones((2, 5)))
    assert out[4] == 15


def test_failure_descriptions_are_one_line() -> None:
    from distributed.comm.core import CommClosedError

    run = types.SimpleNamespace(entities={"sub": "07", "task": "rest"},
                                path=Path("/data/sub-07/func/sub-07_task-rest_bold.nii.gz"))
    err = compute_error(_fake_killed_worker(), step="phase A: QC, ALFF, denoising", run=run)
    text = str(err)
    assert isinstance(err, ComputeError) and "\n" not in text
    assert text.startswith("/data/sub-07/func/sub-07_task-rest_bold.nii.gz: sub-07: phase A: "
                           "QC, ALFF, denoising failed: Dask workers died")
    assert "KilledWorker" in text and "memory" in text
    comm = CommClosedError("in <TCP (closed) ConnectionPool.gather local=tcp://a remote=tcp://b>:"
                           "\nStream is closed")
    assert is_cluster_failure(comm)
    assert "lost contact" in describe_failure(comm) and "\n" not in describe_failure(comm)
    assert "ran out of memory" in describe_failure(MemoryError())
    assert not is_cluster_failure(ValueError("x"))
    assert not is_cluster_failure(PermissionError(13, "Permission denied"))
    assert describe_failure(PermissionError(13, "Permission denied")) == \
        "PermissionError: [Errno 13] Permission denied"
    assert describe_failure(ValueError("bad\nvalue")) == "ValueError: bad value"


def test_failed_runs_do_not_stop_the_others(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """A run whose task raises (here: a KilledWorker, as when workers die of OOM) fails alone,
    with a one-line ComputeError naming the subject, the file and the step; an unexpected
    exception is a NeuroscaleError, and KeyboardInterrupt still stops everything."""
    from neuroscale.analysis import alff as alff_mod
    from neuroscale.pipelines import participant
    from neuroscale.pipelines.participant import ParticipantConfig, run_participant

    ds = _bids(tmp_path / "ds", {"01": 1, "02": 2, "03": 3}, shape=(12, 13, 10, 40),
               n_volumes={"01": 44})
    real_block = alff_mod.alff_block

    def flaky_block(block: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if block.shape[0] == 44:  # sub-01's blocks: all 44 time points of some voxels
            raise _fake_killed_worker()  # inside a task of phase B (ALFF)
        return real_block(block, *args, **kwargs)

    monkeypatch.setattr(alff_mod, "alff_block", flaky_block)

    real_process = participant.process_bold_run

    def process(run: Any, *args: Any, **kwargs: Any) -> Any:
        if run.entities["sub"] == "03":
            raise TypeError("unexpected\nbug")
        return real_process(run, *args, **kwargs)

    monkeypatch.setattr(participant, "process_bold_run", process)
    # synthetic noise without motion: motion correction (tested in tests/preproc) is off
    config = ParticipantConfig(report=False, progress=False, centrality=False,
                               work_dir=tmp_path / "work", motion_correction=False)
    outcomes = run_participant(ds, tmp_path / "out", config)
    by_sub = {o.run.entities["sub"]: o for o in outcomes}
    err = by_sub["01"].error
    assert isinstance(err, ComputeError) and isinstance(err, NeuroscaleError)
    text = str(err)
    assert "\n" not in text
    assert "sub-01_task-rest_bold.nii.gz" in text and "sub-01: phase B: ALFF, denoising" \
        in text and "KilledWorker" in text
    assert by_sub["02"].error is None
    assert (tmp_path / "out" / "sub-02" / "func" / "sub-02_task-rest_stat-reho_boldmap.nii.gz"
            ).is_file()
    err3 = by_sub["03"].error
    assert type(err3) is NeuroscaleError
    assert str(err3).endswith("sub-03: unexpected error (TypeError: unexpected bug); run with "
                              "-vv for the traceback")

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(participant, "process_bold_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_participant(ds, tmp_path / "out2", config)


def test_subjects_run_concurrently_within_the_bound(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """--max-concurrent-subjects N: at most N participants in flight, the others queue; a
    failing participant is reported with its label and does not stop the others; outcomes
    come back in dataset order."""
    from neuroscale.pipelines import participant
    from neuroscale.pipelines.participant import ParticipantConfig, run_participant

    ds = _bids(tmp_path / "ds", {"01": 1, "02": 2, "03": 3, "04": 4}, shape=(10, 11, 8, 40))
    lock = threading.Lock()
    active: list[str] = []
    peak = [0]
    real_process = participant.process_bold_run

    def process(run: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            active.append(run.subject)
            peak[0] = max(peak[0], len(active))
        try:
            time.sleep(0.3)  # keep the subject in flight long enough to overlap
            if run.subject == "02":
                raise AnalysisError("planted failure", run.path)
            return real_process(run, *args, **kwargs)
        finally:
            with lock:
                active.remove(run.subject)

    monkeypatch.setattr(participant, "process_bold_run", process)
    config = ParticipantConfig(report=False, progress=False, centrality=False,
                               work_dir=tmp_path / "work", max_concurrent_subjects=2,
                               motion_correction=False)
    outcomes = run_participant(ds, tmp_path / "out", config)
    assert [o.run.subject for o in outcomes] == ["01", "02", "03", "04"]
    assert peak[0] == 2
    assert "planted failure" in str(outcomes[1].error)
    for o in (outcomes[0], outcomes[2], outcomes[3]):
        assert o.error is None
        assert o.outputs["reho"].is_file()


def test_subject_concurrency_default_and_validation() -> None:
    from neuroscale.pipelines.participant import subject_concurrency

    class FakeClient:
        def scheduler_info(self) -> dict[str, Any]:
            return {"workers": {f"tcp://w{i}": {} for i in range(8)}}

    assert subject_concurrency(None, None, 5) == 1
    assert subject_concurrency(None, FakeClient(), 10) == 4
    assert subject_concurrency(None, FakeClient(), 3) == 3
    assert subject_concurrency(6, None, 2) == 2
    with pytest.raises(ConfigurationError):
        subject_concurrency(0, None, 2)


PHASE_A_TASKS = ("_mask_slab", "clean_block", "alff_block", "tsnr_map")


def _nifti_outputs(outcome: Any) -> dict[str, Path]:
    return {k: p for k, p in outcome.outputs.items() if str(p).endswith(".nii.gz")}


@pytest.mark.slow
def test_sigkilled_worker_mid_run_gives_the_same_outputs(tmp_path: Path) -> None:
    """SIGKILL one of two worker processes while phase A runs: Dask recomputes its tasks on
    the other (then the restarted) worker and the outputs equal a clean run's."""
    psutil = pytest.importorskip("psutil")
    from distributed import Client, LocalCluster

    from neuroscale.bids.layout import find_bold_runs
    from neuroscale.pipelines.participant import ParticipantConfig, process_bold_run

    ds = _bids(tmp_path / "ds", {"01": 5}, shape=(24, 26, 20, 120))
    (run,) = find_bold_runs(ds)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="3GB") as cluster, \
            Client(cluster) as client:
        clean = process_bold_run(run, tmp_path / "clean", ParticipantConfig(
            report=False, progress=False, work_dir=tmp_path / "work_clean"), client)
        pids = client.run(os.getpid)
        killed: list[int] = []
        stop = threading.Event()

        def killer() -> None:
            while not stop.is_set():
                for addr, keys in client.processing().items():
                    # phase A's graph is running (its tasks are named after these kernels)
                    if any(name in str(k) for k in keys for name in PHASE_A_TASKS):
                        pid = pids[addr]
                        psutil.Process(pid).send_signal(signal.SIGKILL)
                        killed.append(pid)
                        return
                time.sleep(0.005)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            again = process_bold_run(run, tmp_path / "killed", ParticipantConfig(
                report=False, progress=False, work_dir=tmp_path / "work_killed"), client)
        finally:
            stop.set()
            thread.join(5)
        assert killed, "no worker was killed during the run"
        assert not psutil.pid_exists(killed[0]) or \
            psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert again.error is None
    ref = _nifti_outputs(clean)
    assert len(ref) >= 7 and set(_nifti_outputs(again)) == set(ref)
    for name, path in ref.items():
        a = np.asarray(nib.load(path).dataobj, dtype=np.float64)
        b = np.asarray(nib.load(_nifti_outputs(again)[name]).dataobj, dtype=np.float64)
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=name)
    qc_a = json.loads(clean.outputs["qc"].read_text())
    qc_b = json.loads(again.outputs["qc"].read_text())
    for key, value in qc_a.items():
        if isinstance(value, float):
            assert qc_b[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


# -- logging and worker plugins ---------------------------------------------------------------
def _fails_in_a_worker(x: int) -> float:
    return x / 0


def test_failed_task_details_go_to_the_log_file_not_the_terminal(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A task failing in a worker of the LocalCluster neuroscale starts: Dask's ``Compute
    Failed`` block (with the traceback) is in the run's log file, not on stderr (the workers'
    stderr is the user's terminal); the workers also got the ITK pinning plugin."""
    from neuroscale.compute.determinism import DeterministicITK
    from neuroscale.compute.logs import start_log_file, stop_log_file

    log_file = start_log_file(tmp_path / "work")
    try:
        with cluster_client(n_workers=1, memory_limit="1GB", dashboard=False, quiet=True,
                            log_file=log_file) as client:
            with pytest.raises(ZeroDivisionError):
                client.submit(_fails_in_a_worker, 3).result()
            environ = client.run(lambda: {k: os.environ.get(k) for k in
                                          ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
                                           "ANTS_RANDOM_SEED")})
            plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
            time.sleep(0.5)  # the worker's record is written before the client sees the error
    finally:
        kept = stop_log_file()
    err = capfd.readouterr().err
    assert "Compute Failed" not in err and "Traceback" not in err, err
    assert kept == log_file and log_file.parent == tmp_path / "work" / "logs"
    text = log_file.read_text()
    assert "Compute Failed" in text and "ZeroDivisionError" in text, text
    assert all(env == {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "ANTS_RANDOM_SEED": "1"}
               for env in environ.values()), environ
    assert all(DeterministicITK.name in names for names in plugins.values()), plugins


def test_an_empty_log_file_is_removed(tmp_path: Path) -> None:
    from neuroscale.compute.logs import current_log_file, start_log_file, stop_log_file

    path = start_log_file(tmp_path)
    assert current_log_file() == path
    assert stop_log_file() is None and not path.exists() and current_log_file() is None
