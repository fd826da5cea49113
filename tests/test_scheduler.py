"""The same pipeline through an existing Dask scheduler (``--scheduler tcp://...``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neuroscale.cli.main import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ds-studyforrest-oneback"
PREFIX = "sub-02_task-oneback_run-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def scheduler_address(tmp_path: Path):  # type: ignore[no-untyped-def]
    dask_bin = Path(sys.executable).with_name("dask")
    if not dask_bin.exists():
        pytest.skip("the `dask` command-line tool is not installed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    procs = [subprocess.Popen([str(dask_bin), "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--dashboard-address", ":0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(2)
    for i in range(2):
        procs.append(subprocess.Popen(
            [str(dask_bin), "worker", address, "--nthreads", "1", "--memory-limit", "2GB",
             "--name", f"w{i}", "--local-directory", str(tmp_path / f"w{i}")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    client = Client(address, timeout="30s")
    client.wait_for_workers(2, timeout=60)
    client.close()
    yield address
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_existing_scheduler_gives_the_local_results(scheduler_address: str,
                                                    tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    # the example's first 60 volumes keep the test short (two runs of motion correction);
    # motion correction included (its ITK threads are set per task on external workers);
    # the T1w registration is tested elsewhere (tests/preproc)
    ds = tmp_path / "ds"
    shutil.copytree(EXAMPLE, ds)
    bold = next((ds / "sub-02" / "func").glob("*_bold.nii.gz"))
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj[..., :60]), img.affine, img.header), bold)
    args = ["participant", "--no-report", "--no-progress", "--seed", "0,-66,3,8",
            "--no-registration"]
    assert main([str(ds), str(remote), *args, "--scheduler", scheduler_address]) == 0
    assert main([str(ds), str(local), *args, "--n-workers", "2"]) == 0
    func = Path("sub-02") / "func"
    names = sorted(p.name for p in (remote / func).glob("*.nii.gz"))
    assert len(names) == 8, names  # mask, tsnr, alff, falff, reho, dcb, dcw, seed
    assert names == sorted(p.name for p in (local / func).glob("*.nii.gz"))
    for name in names:
        a = np.asarray(nib.load(remote / func / name).dataobj, dtype=np.float64)
        b = np.asarray(nib.load(local / func / name).dataobj, dtype=np.float64)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)
    shutil.rmtree(tmp_path / "remote_work", ignore_errors=True)


def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    code = main([str(EXAMPLE), str(tmp_path / "out"), "participant", "--scheduler",
                 f"tcp://127.0.0.1:{port}"])
    assert code == 5
    err = capsys.readouterr().err
    assert "scheduler" in err and str(port) in err
