"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")  # numpy#19685: see PERFORMANCE.md

# ANTs/ITK results depend on ITK's thread count, which ITK fixes at the first filter of a process:
# pin it (and ANTs' seeds) before any test imports ants, so in-process results do not depend on
# which test ran ANTs first (neuroscale's own calls pin it too, but only from their first call on)
from neuroscale.compute.determinism import pin_itk

pin_itk()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEUROSCALE_SHARED_DATA", REPO.parent / "shared" / "data"))
#: the README's example (a copy of ../shared/data/bids/ds-studyforrest-oneback without its
#: sourcedata/; the BOLD run and T1w are byte-identical): always there, on any clone
STUDYFORREST = REPO / "examples" / "ds-studyforrest-oneback"
BOLD = STUDYFORREST / "sub-02" / "func" / "sub-02_task-oneback_run-1_bold.nii.gz"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test when it is absent (a fresh clone elsewhere)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def studyforrest_bold() -> Path:
    """The real studyforrest BOLD run (80 x 80 x 35 x 156, TR 2 s), from examples/."""
    if not BOLD.is_file():
        pytest.skip(f"{BOLD} not found")
    return BOLD


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide Zarr working-copy directory."""
    return tmp_path_factory.mktemp("nscache")
