"""Results do not depend on where they ran (issue "trust what exists": reproducibility).

A user of an HPC site starts ``dask scheduler`` and ``dask worker --nthreads 1`` by hand (no
environment prepared for ITK) and passes ``--scheduler tcp://...``: every output of the example
(cropped to a few volumes, with the T1w processing, the registrations and motion correction)
must equal the default LocalCluster's, byte for byte, even with a worker SIGKILLed during the
T1w processing (Dask re-runs the task on another worker).  And the mechanism itself: the same
ANTs calls in two processes with different ITK thread settings give identical results once
:func:`neuroscale.compute.determinism.pin_itk` ran.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.hostile.harness import (
    EXAMPLE_ATLAS,
    check_success,
    output_differences,
    run_cli,
    small_bids,
)

#: volumes of the cropped example: motion correction stays in, the run stays short
N_VOLUMES = 40
ARGS = ["participant", "--no-report", "--no-progress", "--atlas", str(EXAMPLE_ATLAS),
        "--seed", "0,-66,3,8"]


def _clean_env() -> dict[str, str]:
    """This environment without any ITK / ANTs setting (as a user's shell)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("ITK_", "ANTS_")) and k != "NSLOTS"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_bids(tmp_path_factory.mktemp("repro"), N_VOLUMES)


@pytest.fixture(scope="module")
def local_reference(dataset: Path) -> Path:
    """The run on the default LocalCluster (shared by the comparisons)."""
    out = dataset.parent / "local"
    result = run_cli([dataset, out, *ARGS], timeout=3000, env=_clean_env())
    check_success(result)
    return out


@pytest.fixture(scope="module")
def hand_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dask scheduler`` and two ``dask worker --nthreads 1`` (with their nannies), by hand."""
    dask_bin = Path(sys.executable).with_name("dask")
    if not dask_bin.exists():
        pytest.skip("the `dask` command-line tool is not installed")
    root = tmp_path_factory.mktemp("cluster")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = _clean_env()
    procs = [subprocess.Popen([str(dask_bin), "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--dashboard-address", ":0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for i in range(2):
        procs.append(subprocess.Popen(
            [str(dask_bin), "worker", address, "--nthreads", "1", "--memory-limit", "2GB",
             "--name", f"w{i}", "--local-directory", str(root / f"w{i}")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    try:
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_hand_started_workers_one_killed_give_the_local_outputs(
        dataset: Path, local_reference: Path, hand_started: str) -> None:
    """The run on the hand-started workers, one of them SIGKILLed during the T1w processing
    (its nanny restarts it, a fresh process; the task runs again on either worker): every
    output equals the LocalCluster's.  (One run for both claims keeps CI time down: with the
    kill, it also shows a run on these workers equals the undisturbed LocalCluster run.)"""
    import psutil
    from distributed import Client

    out = dataset.parent / "hand_started"
    killed: list[int] = []
    stop = threading.Event()
    with Client(hand_started, timeout="30s") as client:
        pids = client.run(os.getpid)

        def killer() -> None:
            while not stop.is_set():
                for addr, keys in client.processing().items():
                    if any(str(k).startswith("process_anat-") for k in keys) and addr in pids:
                        time.sleep(2.0)  # well into the task (ANTs has started)
                        psutil.Process(pids[addr]).send_signal(signal.SIGKILL)
                        killed.append(pids[addr])
                        return
                time.sleep(0.05)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            result = run_cli([dataset, out, *ARGS, "--scheduler", hand_started], timeout=3000,
                             env=_clean_env())
        finally:
            stop.set()
            thread.join(10)
        assert killed, "no worker was killed during the T1w processing"
        assert killed[0] not in client.run(os.getpid).values()
    check_success(result)
    assert (out / "sub-02" / "anat" / "sub-02_dseg.nii.gz").is_file()
    assert not output_differences(local_reference, out), output_differences(local_reference, out)


_PROBE = r"""
import hashlib, os, sys
threads, pin = sys.argv[1].split("-")
if threads != "unset":
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = threads
from neuroscale.compute.determinism import pin_itk
if pin == "pin":
    pin_itk()
else:
    os.environ["ANTS_RANDOM_SEED"] = "1"
import ants, numpy as np
from neuroscale.preproc.anat import read_3d_ants
t1 = ants.resample_image(read_3d_ants(sys.argv[2], "T1w"), (6.0,) * 3, use_voxels=False,
                         interp_type=0)
mask = ants.get_mask(t1, cleanup=2)
n4 = ants.n4_bias_field_correction(t1, mask=mask, shrink_factor=2, spline_param=200)
shifted = n4.new_image_like(np.roll(n4.numpy(), 1, axis=0))
aff = ants.registration(n4, shifted, type_of_transform="antsRegistrationSyNQuickRepro[a]",
                        outprefix=sys.argv[3] + "/a_")
seg = ants.atropos(a=n4, x=mask, i="Kmeans[3]", m="[0.1,1x1x1]", c="[3,0]", r=0)
digest = hashlib.sha256()
for arr in (n4.numpy(), ants.read_transform(aff["fwdtransforms"][0]).parameters,
            seg["segmentation"].numpy(), seg["probabilityimages"][1].numpy()):
    digest.update(np.ascontiguousarray(arr).tobytes())
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_pinned_ants_calls_agree_across_thread_settings(tmp_path: Path) -> None:
    """N4, a sampled affine registration and Atropos in processes whose environment asks ITK
    for 3 or the default number of threads: identical results after ``pin_itk``; without
    it (same seeds), 3 threads give other results (the count matters, the test can see it)."""
    t1w = Path(__file__).resolve().parents[1] / "examples" / "ds-studyforrest-oneback" / \
        "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    digests = {}
    for setting in ("unset-pin", "3-pin", "3-nopin"):
        work = tmp_path / setting
        work.mkdir()
        proc = subprocess.run([sys.executable, "-c", _PROBE, setting, str(t1w), str(work)],
                              capture_output=True, text=True, env=_clean_env(), timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests[setting] = proc.stdout.strip().splitlines()[-1]
    assert digests["unset-pin"] == digests["3-pin"], digests
    assert digests["3-nopin"] != digests["3-pin"], digests


def test_transform_digest_ignores_hdf5_write_times(tmp_path: Path) -> None:
    """The same SyN written twice, seconds apart: the .h5 bytes differ (HDF5 object headers
    keep their times), :func:`transform_sha256` does not; another transform's does."""
    import ants

    from neuroscale.compute.determinism import pin_itk
    from neuroscale.preproc.anat import read_3d_ants, transform_sha256

    pin_itk()
    example = Path(__file__).resolve().parents[1] / "examples" / "ds-studyforrest-oneback"
    t1 = ants.resample_image(read_3d_ants(example / "sub-02" / "anat" / "sub-02_T1w.nii.gz",
                                          "T1w"), (8.0,) * 3, use_voxels=False, interp_type=0)
    shifted = t1.new_image_like(t1.numpy()[::-1].copy())
    files = []
    for i in range(2):
        reg = ants.registration(t1, shifted, type_of_transform="SyNOnly", syn_metric="mattes",
                                reg_iterations=(4, 0, 0), write_composite_transform=True,
                                outprefix=str(tmp_path / f"r{i}_"))
        files.append(Path(reg["fwdtransforms"]))
        time.sleep(1.1)
    assert files[0].read_bytes() != files[1].read_bytes()
    assert transform_sha256(files[0]) == transform_sha256(files[1])
    inverse = Path(reg["invtransforms"])
    assert transform_sha256(inverse) != transform_sha256(files[1])


def test_pin_after_ants_was_used_warns() -> None:
    """A process that ran ANTsPy before neuroscale could pin ITK (thread variable unset) is
    told that its registrations may differ; a fresh process pins silently."""
    code = r"""
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from neuroscale.compute.determinism import pin_itk
if sys.argv[1] == "used":
    import ants, numpy as np
    ants.smooth_image(ants.from_numpy(np.ones((8, 8, 8), dtype="float32")), 1.0)
print(pin_itk())
"""
    out = {}
    for state in ("used", "fresh"):
        proc = subprocess.run([sys.executable, "-c", code, state], capture_output=True,
                              text=True, env=_clean_env(), timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[state] = (proc.stdout.strip().splitlines()[-1], proc.stderr)
    assert out["used"][0] == "False" and "may differ" in out["used"][1], out["used"]
    assert out["fresh"] == ("True", ""), out["fresh"]
