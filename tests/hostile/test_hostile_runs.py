"""Interrupted runs (issue "trust what exists": keep them closed).

A user presses Ctrl-C (SIGINT to the whole foreground process group: the command and the
LocalCluster's worker processes) or the batch system kills the command (SIGKILL of the command
alone) in the middle of a run, then runs the same command again.  The interrupted command exits
130 with one line and no traceback (SIGINT), and the re-run's outputs equal an undisturbed
run's, byte for byte (:func:`~tests.hostile.harness.output_differences`): nothing half-written
is taken for a result.  The example is cropped and run with the fast options (no T1w, no
motion correction; the runs with them are in ``tests/test_reproducibility.py``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.hostile.harness import (
    _TRACEBACK,
    FAST,
    check_success,
    neuroscale_command,
    output_differences,
    run_cli,
    small_bids,
)

ARGS = ["participant", *FAST, "--no-report", "--seed", "0,-66,3,8"]


@dataclass
class Interruption:
    """Send ``signum`` once a stderr line matches ``after`` (plus ``delay`` seconds)."""

    id: str
    signum: int
    after: str
    delay: float = 1.0
    #: the whole process group (Ctrl-C at a terminal) or the command alone (``kill``)
    group: bool = True


CASES = [
    # Ctrl-C in phase B (ALFF, denoising: outputs and the denoised store being written)
    Interruption("sigint-denoising", signal.SIGINT, r": ALFF, denoising$"),
    # kill -9 while the working copy is written (ingest), and in phase C (ReHo...)
    Interruption("sigkill-ingest", signal.SIGKILL, r"^neuroscale: sub-02/func/", delay=3.0,
                 group=False),
    Interruption("sigkill-reho", signal.SIGKILL, r": ReHo, ", delay=0.5, group=False),
]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The cropped example and its undisturbed run."""
    root = tmp_path_factory.mktemp("runs")
    bids = small_bids(root, 40)
    out = root / "clean"
    check_success(run_cli([bids, out, *ARGS]))
    return bids, out


def _interrupted_run(args: list[str], case: Interruption, timeout: float = 300.0
                     ) -> tuple[int, str, bool]:
    """Run the command, signal it as ``case`` says; (exit code, stderr, signal sent)."""
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen([*neuroscale_command(), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=env, start_new_session=True)
    lines: list[str] = []
    sent = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not sent.is_set() and re.search(case.after, line.rstrip("\n")):
                time.sleep(case.delay)
                if proc.poll() is None:
                    if case.group:
                        os.killpg(proc.pid, case.signum)
                    else:
                        proc.send_signal(case.signum)
                    sent.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        proc.wait(timeout=timeout)
        thread.join(30)
    finally:
        _wait_for_group(proc.pid)
    assert proc.stdout is not None
    proc.stdout.close()
    return proc.returncode, "".join(lines), sent.is_set()


def _wait_for_group(pgid: int, timeout: float = 60.0) -> None:
    """Wait until every process of the group (the command's workers) is gone; kill leftovers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail(f"processes of the interrupted command were still running {timeout:.0f} s "
                "after it ended")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interrupted_run_then_rerun_equals_a_clean_run(case: Interruption,
                                                       clean: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    bids, reference = clean
    out = tmp_path / "out"
    code, stderr, sent = _interrupted_run([str(bids), str(out), *ARGS], case)
    assert sent, f"{case.id}: the run ended before the signal (exit {code})\n{stderr[-2000:]}"
    if case.signum == signal.SIGINT:
        assert code == 130, f"{case.id}: exit {code}\n{stderr[-3000:]}"
        assert not _TRACEBACK.search(stderr), f"{case.id}: traceback\n{stderr[-3000:]}"
        assert stderr.rstrip().splitlines()[-1] == "neuroscale: interrupted", stderr[-2000:]
    else:
        assert code == -signal.SIGKILL
    again = run_cli([bids, out, *ARGS])
    check_success(again)
    assert not output_differences(reference, out), output_differences(reference, out)
