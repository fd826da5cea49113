"""neuroscale.settings: one validated `neuroscale` section of the Dask config, seen by workers."""

from __future__ import annotations

from pathlib import Path

import dask.config
import pytest

from neuroscale import settings
from neuroscale.cli.main import main
from neuroscale.compute.cluster import cluster_client
from neuroscale.errors import ConfigurationError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ds-studyforrest-oneback"


def test_defaults_and_overrides() -> None:
    assert settings.validate() == settings.DEFAULTS
    with dask.config.set({"neuroscale.read-block-bytes": "8 MiB", "neuroscale.compress": "false",
                          "neuroscale.direct_reads": False}):
        assert settings.get("read-block-bytes") == 8 * 2**20
        assert settings.get("compress") is False
        assert settings.get("direct_reads") is False


@pytest.mark.parametrize(("key", "value", "message"), [
    ("compress", "maybe", r"neuroscale.compress: expected true or false, got 'maybe'"),
    ("read-block-bytes", "lots", r"neuroscale.read-block-bytes: expected a size in bytes"),
    ("series-store-chunk-bytes", 0, r"expected a positive size"),
    ("direct-write", True, r"unknown neuroscale setting\(s\) direct-write"),
])
def test_bad_values_are_one_clear_error(key: str, value: object, message: str) -> None:
    with dask.config.set({f"neuroscale.{key}": value}), pytest.raises(ConfigurationError,
                                                                        match=message):
        settings.validate()


def test_cli_refuses_a_bad_setting_before_any_work(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with dask.config.set({"neuroscale.compress": "maybe"}):
        code = main([str(EXAMPLE), str(tmp_path / "out"), "participant"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "neuroscale: error: neuroscale.compress: expected true or false, got 'maybe'"]
    assert not (tmp_path / "out").exists()


def test_workers_see_the_clients_settings() -> None:
    """The reason for the section: a module global set in the client never reached workers."""
    with dask.config.set({"neuroscale.read-block-bytes": 3 * 2**20,
                          "neuroscale.direct-writes": False}):
        with cluster_client(n_workers=1, threads_per_worker=1, quiet=True) as client:
            seen = client.run(lambda: (settings.get("read-block-bytes"),
                                       settings.get("direct-writes")))
    assert list(seen.values()) == [(3 * 2**20, False)]


def test_a_fallback_to_zarr_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    settings._fallbacks_logged.discard("test reads")
    with caplog.at_level("INFO", logger="neuroscale"):
        settings.log_fallback_once("test reads", "/data/a.zarr")
        settings.log_fallback_once("test reads", "/data/b.zarr")
    lines = [r.getMessage() for r in caplog.records if "test reads" in r.getMessage()]
    assert len(lines) == 1 and "/data/a.zarr" in lines[0] and "zarr-python" in lines[0]
