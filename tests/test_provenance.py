"""Provenance sidecars: hashing, round-trip, up-to-date checks, atomicity."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import pytest

import neuroscale
from neuroscale.bids import write_dataset_description
from neuroscale.errors import ConfigurationError, InputNotFoundError
from neuroscale.provenance import (
    PROVENANCE_KEYS,
    canonical_json,
    is_up_to_date,
    provenance_hash,
    read_provenance,
    sha256_file,
    sidecar_path,
    software_versions,
    write_provenance,
)

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=93.5)
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


def reference_hash(shas: list[str], params: dict) -> str:
    """The documented definition, written out plainly."""
    text = json.dumps({"neuroscale": neuroscale.__version__, "parameters": params,
                       "sources_sha256": shas}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def deriv(tmp_path: Path) -> Path:
    """A derivative dataset with one output file and its mask."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text('{"Name": "r", "BIDSVersion": "1.8.0"}')
    out = tmp_path / "out"
    write_dataset_description(out, [raw], commit=None)
    func = out / "sub-02" / "func"
    func.mkdir(parents=True)
    (func / "sub-02_task-x_run-1_desc-brain_mask.nii.gz").write_bytes(b"mask bytes")
    (func / "sub-02_task-x_run-1_stat-alff_boldmap.nii.gz").write_bytes(b"map bytes")
    return out


def test_sha256_file(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(1_000_003)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(f) == expected
    assert sha256_file(f, chunk=4099) == expected  # chunk boundaries do not matter
    with open(f, "rb") as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == expected
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(InputNotFoundError):
        sha256_file(tmp_path / "missing")
    with pytest.raises(InputNotFoundError):
        sha256_file(tmp_path)


def test_sha256_matches_ingest_hash(studyforrest_bold: Path, cache_dir: Path) -> None:
    """The Zarr working copy's stored sha256 is the file's sha256: pipelines can reuse it."""
    from neuroscale.image import open_image

    expected = hashlib.sha256(studyforrest_bold.read_bytes()).hexdigest()
    assert sha256_file(studyforrest_bold) == expected
    img = open_image(studyforrest_bold, cache_dir=cache_dir)
    assert img.meta["sha256"] == expected


def test_provenance_hash_definition() -> None:
    params = {"band": [0.01, 0.08], "detrend": True, "fwhm": None, "name": "alff"}
    h = provenance_hash([SHA_A, SHA_B], params)
    assert h == reference_hash([SHA_A, SHA_B], params)
    assert len(h) == 64
    # key order and tuple/list do not matter; numpy scalars equal Python numbers
    same = {"name": "alff", "fwhm": None, "detrend": np.bool_(True),
            "band": (np.float64(0.01), 0.08)}
    assert provenance_hash([SHA_A, SHA_B], same) == h
    # any change of parameter, source or order changes the hash
    assert provenance_hash([SHA_A, SHA_B], {**params, "band": [0.01, 0.1]}) != h
    assert provenance_hash([SHA_A, SHA_B], {**params, "extra": 1}) != h
    assert provenance_hash([SHA_A, SHA_A], params) != h
    assert provenance_hash([SHA_B, SHA_A], params) != h
    assert provenance_hash([SHA_A], params) != h
    with pytest.raises(ConfigurationError):
        provenance_hash(["not-a-sha"], params)
    with pytest.raises(ConfigurationError):
        provenance_hash([SHA_A], {"f": object()})


def test_provenance_hash_includes_version(monkeypatch: pytest.MonkeyPatch) -> None:
    h = provenance_hash([SHA_A], {"a": 1})
    monkeypatch.setattr(neuroscale, "__version__", "999.0")
    assert provenance_hash([SHA_A], {"a": 1}) != h


def test_round_trip(deriv: Path, tmp_path: Path) -> None:
    func = deriv / "sub-02" / "func"
    output = func / "sub-02_task-x_run-1_stat-alff_boldmap.nii.gz"
    mask = func / "sub-02_task-x_run-1_desc-brain_mask.nii.gz"
    atlas = tmp_path / "atlas.nii.gz"
    atlas.write_bytes(b"atlas")
    bold_sha = hashlib.sha256(b"pretend bold").hexdigest()
    params = {"band_hz": (0.01, 0.08), "detrend": True, "t_r_s": np.float32(2.0),
              "mask_path": Path("x/y.nii.gz"), "n": np.int64(3)}
    sources = [
        ("/data/raw/sub-02/func/sub-02_task-x_run-1_bold.nii.gz",
         "sub-02/func/sub-02_task-x_run-1_bold.nii.gz", bold_sha),
        (mask, None, None),
        (atlas, None, None),
        (atlas, "bids:templates:tpl-X/atlas.nii.gz", None),
    ]
    side = write_provenance(output, sources=sources, parameters=params, started=T0, ended=T1,
                            extra={"RepetitionTime": 2.0})
    assert side == func / "sub-02_task-x_run-1_stat-alff_boldmap.json" == sidecar_path(output)
    data = json.loads(side.read_text())
    assert set(data) == {*PROVENANCE_KEYS, "RepetitionTime"}
    assert data["Sources"] == [
        "bids:raw:sub-02/func/sub-02_task-x_run-1_bold.nii.gz",
        "bids::sub-02/func/sub-02_task-x_run-1_desc-brain_mask.nii.gz",
        atlas.resolve().as_uri(),
        "bids:templates:tpl-X/atlas.nii.gz",
    ]
    assert data["SourcesSHA256"] == {
        data["Sources"][0]: bold_sha,
        data["Sources"][1]: hashlib.sha256(b"mask bytes").hexdigest(),
        data["Sources"][2]: hashlib.sha256(b"atlas").hexdigest(),
        data["Sources"][3]: hashlib.sha256(b"atlas").hexdigest(),
    }
    assert data["Parameters"] == {"band_hz": [0.01, 0.08], "detrend": True, "t_r_s": 2.0,
                                  "mask_path": "x/y.nii.gz", "n": 3}
    versions = data["Software"]
    assert set(versions) == {"neuroscale", "numpy", "scipy", "nibabel", "nilearn", "dask",
                             "distributed", "zarr", "python"}
    assert versions["neuroscale"] == neuroscale.__version__
    assert versions["numpy"] == np.__version__
    assert versions["python"] == platform.python_version()
    assert data["Started"] == "2025-03-01T12:00:00.250Z"
    assert data["Ended"] == "2025-03-01T12:01:33.750Z"
    assert dt.datetime.fromisoformat(data["Ended"]) - dt.datetime.fromisoformat(
        data["Started"]) == dt.timedelta(seconds=93.5)
    assert data["RepetitionTime"] == 2.0
    shas = list(data["SourcesSHA256"].values())
    expected = provenance_hash(shas, params)
    assert data["ProvenanceHash"] == expected == reference_hash(shas, data["Parameters"])
    assert read_provenance(output) == data
    assert is_up_to_date(output, expected)
    # a re-run with one changed parameter is not up to date
    assert not is_up_to_date(output, provenance_hash(shas, {**params, "detrend": False}))


def test_naive_and_offset_times(tmp_path: Path) -> None:
    out = tmp_path / "x_bold.tsv"
    paris = dt.timezone(dt.timedelta(hours=2))
    write_provenance(out, sources=[], parameters={},
                     started=dt.datetime(2025, 6, 1, 14, 0, tzinfo=paris),
                     ended=dt.datetime(2025, 6, 1, 14, 0, 1, tzinfo=paris))
    data = read_provenance(out)
    assert data is not None and data["Started"] == "2025-06-01T12:00:00.000Z"
    naive = dt.datetime(2025, 6, 1, 14, 0)
    write_provenance(out, sources=[], parameters={}, started=naive, ended=naive)
    data = read_provenance(out)
    assert data is not None
    assert data["Started"] == naive.astimezone(dt.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    with pytest.raises(ConfigurationError, match="before"):
        write_provenance(out, sources=[], parameters={}, started=T1, ended=T0)


def test_not_up_to_date_cases(tmp_path: Path) -> None:
    out = tmp_path / "sub-01_task-x_stat-alff_boldmap.nii.gz"
    h = provenance_hash([], {"a": 1})
    assert not is_up_to_date(out, h)  # nothing exists
    write_provenance(out, sources=[], parameters={"a": 1}, started=T0, ended=T1)
    assert not is_up_to_date(out, h)  # sidecar without output
    out.write_bytes(b"data")
    assert is_up_to_date(out, h)
    assert not is_up_to_date(out, provenance_hash([], {"a": 2}))
    side = sidecar_path(out)
    side.write_text("{truncated")  # corrupt sidecar
    assert not is_up_to_date(out, h)
    side.write_text("[]")
    assert not is_up_to_date(out, h)
    side.unlink()  # output without sidecar
    assert not is_up_to_date(out, h)


def test_atomic_on_serialisation_error(tmp_path: Path) -> None:
    out = tmp_path / "sub-01_task-x_stat-alff_boldmap.nii.gz"
    out.write_bytes(b"data")
    for bad in ({"f": object()}, {"nested": {"fn": len}}, {1: "int key"}):
        with pytest.raises((ConfigurationError, TypeError)):
            write_provenance(out, sources=[], parameters=bad, started=T0, ended=T1)
        assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # nothing left
    with pytest.raises(ConfigurationError, match="object"):
        write_provenance(out, sources=[], parameters={"f": object()}, started=T0, ended=T1)
    # an existing good sidecar survives a failed rewrite untouched
    side = write_provenance(out, sources=[], parameters={"a": 1}, started=T0, ended=T1)
    before = side.read_bytes()
    with pytest.raises(ConfigurationError):
        write_provenance(out, sources=[], parameters={"a": object()}, started=T0, ended=T1)
    with pytest.raises(ConfigurationError, match="reserved"):
        write_provenance(out, sources=[], parameters={}, started=T0, ended=T1,
                         extra={"Sources": []})
    with pytest.raises(InputNotFoundError):
        write_provenance(out, sources=[(tmp_path / "gone.nii", None, None)], parameters={},
                         started=T0, ended=T1)
    with pytest.raises(ConfigurationError):
        write_provenance(out, sources=[(out, None, "xyz")], parameters={}, started=T0,
                         ended=T1)
    with pytest.raises(ConfigurationError):
        write_provenance(out, sources=[(out, "../escape.nii", SHA_A)], parameters={},
                         started=T0, ended=T1)
    assert side.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, side.name])


def test_json_output_is_its_own_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "sub-01_task-x_desc-qc_bold.json"
    # json.dumps writes NaN (not valid JSON); the merged file must be strict JSON
    out.write_text(json.dumps({"fd_mean": 0.12, "tsnr_median": 55.0, "dvars": float("nan")}))
    side = write_provenance(out, sources=[], parameters={"fd_radius_mm": 50},
                            started=T0, ended=T1, extra={"gcor": np.float32("inf")})
    assert side == out

    def strict(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads(out.read_text(), parse_constant=strict)
    assert data["fd_mean"] == 0.12 and data["tsnr_median"] == 55.0
    assert data["dvars"] is None and data["gcor"] is None
    assert data["Parameters"] == {"fd_radius_mm": 50}
    assert is_up_to_date(out, provenance_hash([], {"fd_radius_mm": 50}))


def test_sidecar_path_and_helpers() -> None:
    assert sidecar_path("a/sub-1_bold.nii.gz") == Path("a/sub-1_bold.json")
    assert sidecar_path("a/sub-1_bold.func.gii") == Path("a/sub-1_bold.json")
    assert sidecar_path("a/sub-1_timeseries.tsv") == Path("a/sub-1_timeseries.json")
    assert sidecar_path("a/x_bold.ome.zarr") == Path("a/x_bold.json")
    assert canonical_json({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'
    assert canonical_json({"x": float("inf")}) == '{"x":"Infinity"}'
    assert software_versions()["dask"] is not None
