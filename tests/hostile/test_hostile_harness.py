"""The hostile-input harness itself: the cropped example runs cleanly, and a usage error is caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.hostile.harness import FAST, Case, check_failure, check_success, run_cli, small_bids


def test_cropped_example_runs_cleanly(tmp_path: Path) -> None:
    bids = small_bids(tmp_path)
    result = run_cli([bids, tmp_path / "out", "participant", *FAST])
    check_success(result)
    assert (tmp_path / "out" / "sub-02" / "func").is_dir()


@pytest.mark.parametrize("case", [
    Case("missing-bids-dir", lambda root: [root / "nope", root / "out", "participant", *FAST],
         exit_code=2, message=r"does not exist", names="nope"),
], ids=lambda c: c.id)
def test_usage_errors(tmp_path: Path, case: Case) -> None:
    small_bids(tmp_path)
    result = run_cli(case.make(tmp_path), timeout=case.timeout)
    check_failure(case, result, tmp_path / "out")
