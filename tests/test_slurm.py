"""The participant pipeline on a real one-node SLURM (slurmctld + slurmd + munge on localhost).

A module fixture starts a private SLURM cluster in a temp dir from ``.ci/slurm/slurm.conf.in``
(munged on its own socket and key, slurmctld and slurmd in the foreground, random ports, no
systemd, no cgroups, no accounting), checks it with ``sbatch --wrap hostname``, and
stops everything at the end.  The tests then start Dask workers as SLURM jobs through
dask-jobqueue (``--cluster``), as a user would on a login node.  ``.ci/services`` installs
Debian's ``slurm-wlm`` and ``munge``; without them, or when a daemon does not come
up, the tests skip with the reason (and the daemon's log).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / ".ci" / "slurm" / "slurm.conf.in"
EXAMPLE = REPO / "examples" / "ds-studyforrest-oneback"
FUNC = Path("sub-02") / "func"
PREFIX = "sub-02_task-oneback_run-1"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
#: per-job size of the test's Dask workers: 1 core, 3 GB (the example needs < 1 GB)
JOB_MEMORY = "3GB"
#: daemons live in sbin, which a non-login PATH may lack
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


@dataclass
class MiniSlurm:
    """A running private SLURM: its config file, log dir and the environment to reach it."""

    root: Path
    conf: Path
    host: str
    env: dict[str, str]

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A SLURM client command (sinfo, squeue...) against this cluster."""
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def jobs(self) -> list[tuple[str, str, str]]:
        """(job id, name, state) of the jobs in the queue."""
        out = self.run("squeue", "-h", "-o", "%i|%j|%T").stdout
        return [tuple(line.split("|", 2)) for line in out.splitlines()  # type: ignore[misc]
                if line.count("|") == 2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path.name}: no log)"
    return f"{path.name}: " + " | ".join(line.strip() for line in text[-lines:])


def _node_line(host: str) -> str:
    """``NodeName=...`` with the machine's CPUs/sockets/cores (``slurmd -C``), 80 % of RAM."""
    slurmd = shutil.which("slurmd", path=PATH) or "slurmd"
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), "")
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    keep = {k: fields[k] for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                   "ThreadsPerCore") if k in fields}
    keep.setdefault("CPUs", str(os.cpu_count() or 1))
    return (f"NodeName={host} NodeAddr=127.0.0.1 "
            + " ".join(f"{k}={v}" for k, v in keep.items())
            + f" RealMemory={int(0.8 * mem_mb)} State=UNKNOWN")


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs.values()):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_for(predicate: Any, timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniSlurm]:
    """A private one-node SLURM cluster (munged, slurmctld, slurmd), stopped at the end."""
    missing = [b for b in BINARIES if shutil.which(b, path=PATH) is None]
    if missing:
        pytest.skip(f"SLURM/munge not installed (no {', '.join(missing)}; Debian: apt-get "
                    "install --no-install-recommends slurm-wlm munge, as .ci/services does)")
    if os.geteuid() != 0:
        pytest.skip("a private SLURM needs root here: slurmd launches jobs as their user")
    if not TEMPLATE.is_file():
        pytest.skip(f"{TEMPLATE} not found")
    pytest.importorskip("dask_jobqueue")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "munge", "jobs"):
        (root / sub).mkdir()
    os.chmod(root, 0o755)
    os.chmod(root / "munge", 0o711)  # munged wants its socket dir traversable by clients
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = root / "munge" / "munge.sock"
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(string.Template(TEMPLATE.read_text()).substitute(
        host=host, user=getpass.getuser(), root=str(root), munge_socket=str(socket_path),
        ctld_port=_free_port(), slurmd_port=_free_port(), node_line=_node_line(host)))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": PATH}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    log = root / "log"

    def start(name: str, cmd: list[str]) -> None:
        with open(log / f"{name}.out", "wb") as fh:
            procs[name] = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)

    def give_up(reason: str) -> None:
        logs = "; ".join(_tail(log / f"{name}.out", 8)
                         for name in ("slurmd", "slurmctld", "munged"))
        _stop(procs)
        pytest.skip(f"one-node SLURM did not come up: {reason} [{logs}]")

    try:  # never leave daemons behind, whatever fails while starting them
        start("munged", ["munged", "--foreground", "--force", f"--socket={socket_path}",
                         f"--key-file={key}", f"--pid-file={root / 'munge' / 'munged.pid'}",
                         f"--log-file={log / 'munged.log'}",
                         f"--seed-file={root / 'munge' / 'munged.seed'}"])
        if not _wait_for(socket_path.exists, 15):
            give_up("munged made no socket")
        start("slurmctld", ["slurmctld", "-D", "-c", "-f", str(conf)])
        start("slurmd", ["slurmd", "-D", "-N", host, "-f", str(conf)])
        cluster = MiniSlurm(root=root, conf=conf, host=host, env=env)

        def node_state() -> str:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    give_up(f"{name} exited with code {proc.returncode}")
            return cluster.run("sinfo", "-h", "-N", "-o", "%T").stdout.strip()

        if not _wait_for(lambda: node_state() in ("idle", "mixed", "allocated"), 90, 1.0):
            give_up(f"node state {node_state()!r} after 90 s (want idle)")
        smoke = cluster.run("sbatch", "--parsable", "-o", str(root / "jobs" / "smoke-%j.out"),
                            "--wrap", "hostname")
        if smoke.returncode != 0:
            give_up(f"`sbatch --wrap hostname` failed: {smoke.stderr.strip()}")
        smoke_id = smoke.stdout.strip().split(";")[0]
        if not _wait_for(lambda: smoke_id not in {j[0] for j in cluster.jobs()}, 120):
            give_up(f"`sbatch --wrap hostname` (job {smoke_id}) did not finish in 120 s")
    except BaseException:
        _stop(procs)
        raise
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # for in-process dask-jobqueue (sbatch/scancel)
    try:
        yield cluster
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        ids = [job[0] for job in cluster.jobs()]
        if ids:
            cluster.run("scancel", *ids)
            _wait_for(lambda: not cluster.jobs(), 30)
        _stop(procs)


def test_one_node_slurm_runs_a_batch_job(slurm: MiniSlurm) -> None:
    out = sorted((slurm.root / "jobs").glob("smoke-*.out"))
    assert len(out) == 1 and out[0].read_text().strip() == socket.gethostname()
    info = slurm.run("sinfo", "-h", "-N", "-o", "%N %c %m %T").stdout.split()
    assert info[0] == slurm.host and int(info[1]) >= 1 and info[3] == "idle", info


def test_dask_workers_are_slurm_jobs(slurm: MiniSlurm, tmp_path: Path) -> None:
    from neuroscale.compute.cluster import cluster_client
    from neuroscale.compute.config import ClusterProfile

    profile = ClusterProfile(name="ci", kind="slurm", log_directory=str(tmp_path / "logs"),
                             local_directory=str(tmp_path / "scratch"))
    with cluster_client(cluster=profile, cores=1, memory=JOB_MEMORY, walltime="00:10:00",
                        jobs=2, dashboard=False, quiet=True) as client:
        client.wait_for_workers(2, timeout=120)
        script = client.cluster.job_script()
        assert f"{sys.executable} -m distributed.cli.dask_worker" in script
        where = client.run(lambda: (os.environ.get("SLURM_JOB_ID"), os.environ.get(
            "SLURM_JOB_NAME"), socket.gethostname()))
        running = {job_id for job_id, name, state in slurm.jobs()
                   if name == "neuroscale" and state == "RUNNING"}
        total = client.submit(lambda n: sum(range(n)), 10**6).result(timeout=60)
    assert total == sum(range(10**6))
    ids = {job_id for job_id, _, _ in where.values()}
    assert len(ids) == 2 and None not in ids, where  # two workers, two distinct SLURM jobs
    assert ids == running
    assert {(name, host) for _, name, host in where.values()} == {("neuroscale", slurm.host)}
    # the jobs are cancelled when the client closes
    assert _wait_for(lambda: not [j for j in slurm.jobs() if j[0] in ids], 30)


def _assert_json_close(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            if key not in ("Started", "Ended"):  # wall-clock times of the run
                _assert_json_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_json_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9, err_msg=where)
    else:
        assert a == b, where


def _skip_preprocessing() -> list[str]:
    """Flags that skip raw-run preprocessing (motion correction, registration), if the CLI has
    them: the test is about where the work runs, and these steps take minutes on 2 cores."""
    from neuroscale.cli.main import build_parser

    known = {opt for action in build_parser()._actions for opt in action.option_strings}
    return [f for f in ("--no-motion-correction", "--no-registration") if f in known]


def _voxels(path: Path) -> np.ndarray:
    img: Any = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float64)


def _neuroscale(args: list[str], env: dict[str, str], cwd: Path,
                timeout: float = 480) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("neuroscale")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "neuroscale.cli.main"]
    try:
        return subprocess.run([*cmd, *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"neuroscale {' '.join(args)} did not finish in {timeout} s: "
                    f"{(exc.stderr or b'')[-2000:]!r}")


@pytest.mark.slow
def test_participant_pipeline_through_slurm(slurm: MiniSlurm, tmp_path: Path) -> None:
    """``neuroscale BIDS OUT participant --cluster ci-slurm`` == the same on a LocalCluster."""
    jobs_dir = tmp_path / "joblogs"
    config_dir = tmp_path / "dask-config"
    config_dir.mkdir()
    # a user's profile, read by Dask from DASK_CONFIG (as from ~/.config/dask/)
    (config_dir / "neuroscale.yaml").write_text(f"""\
neuroscale:
  profiles:
    ci-slurm:
      type: slurm
      description: one-node test SLURM
      queue: ci
      cores: 1
      memory: {JOB_MEMORY}
      walltime: "00:15:00"
      jobs: 1
      log-directory: {jobs_dir}
      local-directory: {tmp_path / "scratch"}
      job-script-prologue:
        - echo "neuroscale-job id=$SLURM_JOB_ID node=$SLURMD_NODENAME"
""")
    env = {**slurm.env, "DASK_CONFIG": str(config_dir), "OPENBLAS_CORETYPE": "Haswell"}
    args = ["participant", "--no-report", "--no-progress", "--no-centrality",
            "--seed", "0,-66,3,8", *_skip_preprocessing()]
    slurm_out, local_out = tmp_path / "slurm", tmp_path / "local"

    seen: set[str] = set()  # neuroscale jobs seen RUNNING while the pipeline runs
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(j for j, name, state in slurm.jobs()
                        if name == "neuroscale" and state == "RUNNING")
            stop.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        # --jobs 2 overrides the profile's 1: two SLURM jobs, one Dask worker each
        run = _neuroscale([str(EXAMPLE), str(slurm_out), *args, "--cluster", "ci-slurm",
                           "--jobs", "2", "--work-dir", str(tmp_path / "slurm_work")],
                          env, tmp_path)
    finally:
        stop.set()
        watcher.join(timeout=10)
    slurm_s = time.monotonic() - t0
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    assert "SLURM cluster 'ci-slurm' (2 jobs)" in run.stderr
    assert len(seen) == 2, (seen, run.stderr[-2000:])

    # each job's log says it ran in SLURM and its Dask worker joined this run's scheduler
    schedulers = set()
    for job_id in seen:
        out = (jobs_dir / f"neuroscale-{job_id}.out").read_text()
        err = (jobs_dir / f"neuroscale-{job_id}.err").read_text()
        assert f"neuroscale-job id={job_id} node={slurm.host}" in out
        joined = re.search(r"Registered to:\s+(tcp://\S+)", err)
        assert joined, err[-2000:]
        schedulers.add(joined.group(1))
    assert len(schedulers) == 1, schedulers
    assert _wait_for(lambda: not [j for j in slurm.jobs() if j[0] in seen], 30)

    t0 = time.monotonic()
    local = _neuroscale([str(EXAMPLE), str(local_out), *args, "--n-workers", "2",
                         "--work-dir", str(tmp_path / "local_work")], env, tmp_path)
    local_s = time.monotonic() - t0
    assert local.returncode == 0, local.stderr[-3000:]
    print(f"\nparticipant pipeline: SLURM (2 jobs) {slurm_s:.1f} s, local {local_s:.1f} s")

    names = sorted(p.name for p in (slurm_out / FUNC).glob("*.nii.gz"))
    assert len(names) == 6, names  # mask, tsnr, alff, falff, reho, seed
    assert names == sorted(p.name for p in (local_out / FUNC).glob("*.nii.gz"))
    assert f"{PREFIX}_stat-alff_boldmap.nii.gz" in names
    for name in names:
        np.testing.assert_allclose(_voxels(slurm_out / FUNC / name),
                                   _voxels(local_out / FUNC / name), rtol=1e-6, atol=1e-6,
                                   err_msg=name)
    jsons = sorted(p.name for p in (slurm_out / FUNC).glob("*.json"))
    assert f"{PREFIX}_desc-qc_bold.json" in jsons
    assert jsons == sorted(p.name for p in (local_out / FUNC).glob("*.json"))
    for name in jsons:
        _assert_json_close(json.loads((local_out / FUNC / name).read_text()),
                           json.loads((slurm_out / FUNC / name).read_text()), name)
    for work in ("slurm_work", "local_work", "scratch"):
        shutil.rmtree(tmp_path / work, ignore_errors=True)
