"""The same pipeline through an existing Dask scheduler (``--scheduler tcp://...``).

The comparison of a run on a scheduler and workers started by hand with the LocalCluster's
(every output, byte for byte, T1w processing and motion correction included; a worker killed
mid-run) is in ``tests/test_reproducibility.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from neuroscale.cli.main import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ds-studyforrest-oneback"
PREFIX = "sub-02_task-oneback_run-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    code = main([str(EXAMPLE), str(tmp_path / "out"), "participant", "--scheduler",
                 f"tcp://127.0.0.1:{port}"])
    assert code == 5
    err = capsys.readouterr().err
    assert "scheduler" in err and str(port) in err
