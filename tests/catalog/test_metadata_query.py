"""Metadata extraction (BIDS, NIfTI, sidecars, DICOM without Annex E tags), the query language,
logical-name safety, and the optional-dependency error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neuroscale.catalog import metadata as md
from neuroscale.catalog.errors import MetadataError, QuerySyntaxError, UnsafePathError
from neuroscale.catalog.paths import check_object_name, normalise_collection, object_key
from neuroscale.catalog.query import BoolOp, Comparison, Not, parse


def test_split_bids_name() -> None:
    assert md.split_bids_name("sub-01_ses-a_task-rest_run-02_bold.nii.gz") == (
        {"sub": "01", "ses": "a", "task": "rest", "run": "02"},
        "bold",
        ".nii.gz",
    )
    assert md.split_bids_name("task-rest_bold.json") == ({"task": "rest"}, "bold", ".json")
    for not_bids in ["README", "bold.nii", "sub-01_sub-02_bold.nii", "sub-01_bo-ld.nii", "x_y.txt"]:
        assert md.split_bids_name(not_bids) is None


def test_nifti_metadata_matches_nibabel(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((7, 6, 5, 9), np.float32), np.eye(4))
    img.header.set_zooms((2.5, 2.0, 3.3, 1500.0))
    img.header.set_xyzt_units("mm", "msec")
    path = tmp_path / "sub-01_task-x_bold.nii.gz"
    nib.save(img, path)
    got = {t.attribute: (t.value, t.unit) for t in md.nifti_metadata(path)}
    ref = nib.load(path).header
    assert got["shape"] == ("x".join(map(str, ref.get_data_shape())), None)
    assert float(got["tr"][0]) == pytest.approx(float(ref.get_zooms()[3]) / 1000.0)  # ms -> s
    assert got["tr"][1] == "s"
    for axis, zoom in zip("xyz", ref.get_zooms()[:3], strict=True):
        assert float(got[f"voxel_{axis}"][0]) == pytest.approx(float(zoom), rel=1e-6)
    assert got["dtype"] == ("float32", None)
    assert got["n_volumes"] == ("9", None)
    bad = tmp_path / "sub-01_task-x_T1w.nii"
    bad.write_bytes(b"not a nifti at all")
    assert [t.attribute for t in md.nifti_metadata(bad)] == ["nifti_error"]


def test_real_studyforrest_metadata(studyforrest_bold: Path) -> None:
    got = {t.attribute: (t.value, t.unit) for t in md.extract(studyforrest_bold)}
    header = nib.load(studyforrest_bold).header
    assert got["shape"][0] == "80x80x35x156" == "x".join(map(str, header.get_data_shape()))
    assert got["tr"] == ("2", "s")
    assert got["voxel_size"] == ("3x3x3.3", "mm")
    assert got["task"] == ("oneback", None) and got["sub"] == ("02", None)
    assert got["RepetitionTime"] == ("2", "s")
    sidecar = json.loads(
        studyforrest_bold.with_name(studyforrest_bold.name[:-7] + ".json").read_text()
    )
    assert got["EchoTime"] == (md.format_value(sidecar["EchoTime"]), "s")
    # identifying DICOM-derived fields of the sidecar are left out
    for key in ("AcquisitionTime", "StudyDescription", "SeriesDescription", "ProtocolName"):
        assert key in sidecar and key not in got


def test_sidecar_inheritance(tmp_path: Path) -> None:
    (tmp_path / "dataset_description.json").write_text("{}")
    (tmp_path / "task-a_bold.json").write_text(json.dumps({"RepetitionTime": 3, "X": "top"}))
    (tmp_path / "task-b_bold.json").write_text(json.dumps({"X": "other task"}))
    func = tmp_path / "sub-1" / "func"
    func.mkdir(parents=True)
    (func / "sub-1_task-a_bold.json").write_text(json.dumps({"RepetitionTime": 2}))
    bold = func / "sub-1_task-a_bold.nii.gz"
    bold.write_bytes(b"")
    assert [p.name for p in md.sidecar_files(bold)] == [
        "task-a_bold.json",
        "sub-1_task-a_bold.json",
    ]
    got = {t.attribute: t.value for t in md.sidecar_metadata(bold)}
    assert got == {"RepetitionTime": "2", "X": "top"}


def test_dicom_series_tags_without_annex_e(shared_data: Path, tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    assert not set(md.DICOM_SERIES_TAGS) & md.DICOM_ANNEX_E
    dicoms = sorted((shared_data / "dicom" / "studyforrest_func_1block" / "dicoms").iterdir())
    if not dicoms:
        pytest.skip("no DICOM files in the shared data")
    ds = pydicom.dcmread(dicoms[0], stop_before_pixels=True)
    assert str(ds.PatientName) and ds.PatientBirthDate  # the file does carry identifiers
    got = {t.attribute: (t.value, t.unit) for t in md.extract(dicoms[0])}
    assert got["Modality"] == ("MR", None)
    assert got["RepetitionTime"][1] == "ms"
    assert float(got["RepetitionTime"][0]) == pytest.approx(float(ds.RepetitionTime))
    assert got["Rows"] == (str(ds.Rows), None)
    identifying = set(got) & md.DICOM_ANNEX_E
    assert identifying == set()
    values = " ".join(v for v, _ in got.values())
    for secret in (str(ds.PatientName), str(ds.PatientBirthDate), str(ds.SeriesInstanceUID)):
        assert secret not in values
    # a synthetic file with every identifying tag set: none of them is extracted
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fake = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    fake.PatientName = "Doe^Jane"
    fake.PatientID = "SECRET-ID"
    fake.InstitutionName = "Secret Hospital"
    fake.StudyDate = "20200101"
    fake.Modality = "MR"
    fake.EchoTime = "30"
    fake.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    got2 = {t.attribute: t.value for t in md.extract(tmp_path / "x.dcm")}
    assert got2 == {"Modality": "MR", "EchoTime": "30"}


def test_parse_meta_option() -> None:
    assert md.parse_meta_option("weight=70:kg") == md.Triple("weight", "70", "kg", "user")
    assert md.parse_meta_option("time=12:30").value == "12:30"
    assert md.parse_meta_option("url=http://x").value == "http://x"
    assert md.parse_meta_option("ratio=5:%").unit == "%"
    with pytest.raises(MetadataError):
        md.parse_meta_option("novalue")
    assert md.Triple("a", "2.50").value_num == 2.5
    assert md.Triple("a", "nan").value_num is None and md.Triple("a", "x1").value_num is None


def test_query_parser() -> None:
    assert parse("task = 'oneback' and tr < 2.5") == BoolOp(
        "and", (Comparison("task", "=", "oneback"), Comparison("tr", "<", 2.5))
    )
    assert parse("NOT a = 1 OR (b like 'x%' and has c)") == BoolOp(
        "or",
        (
            Not(Comparison("a", "=", 1.0)),
            BoolOp("and", (Comparison("b", "like", "x%"), Comparison("c", "has", None))),
        ),
    )
    assert parse("a <> 'it''s'") == Comparison("a", "!=", "it's")
    assert parse('"odd name" >= -1e3') == Comparison("odd name", ">=", -1000.0)
    bad = [
        "", "task =", "= 'x'", "task = oneback", "a = 1 b = 2", "(a = 1", "a = 1)",
        "a = 'x'; drop table avus", "a like 3", "a = 'unterminated", "a == 1", "has",
        "a = 1e999", "not", "a = 1 and", "a = \x00",
    ]  # fmt: skip
    for text in bad:
        with pytest.raises(QuerySyntaxError):
            parse(text)
    with pytest.raises(QuerySyntaxError, match="deeper"):
        parse("(" * 60 + "a = 1" + ")" * 60)
    with pytest.raises(QuerySyntaxError, match="comparisons"):
        parse(" or ".join(["a = 1"] * 300))


def test_names_never_escape() -> None:
    for bad in ["../x", "/abs", "a/../b", "a\x00b", "", "a//b", "./a", "a\\b", "a/\n"]:
        with pytest.raises(UnsafePathError):
            check_object_name(bad)
    assert check_object_name("sub-01/func/x.nii.gz") == "sub-01/func/x.nii.gz"
    assert normalise_collection("lab/study/") == "/lab/study"
    for bad in ["/", "", "/a/../b", "/a/\x00"]:
        with pytest.raises(UnsafePathError):
            normalise_collection(bad)
    for bad in ["../../etc/passwd", "A" * 64, "0" * 63, "0" * 64 + "/"]:
        with pytest.raises(UnsafePathError):
            object_key(bad)


def test_cli_module_imports_without_sqlalchemy() -> None:
    """The core package and the CLI hook work without the extra; using it names the extra."""
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "import argparse, neuroscale.catalog, neuroscale.catalog.cli as c\n"
        "p = argparse.ArgumentParser(); c.add_subparser(p.add_subparsers())\n"
        "args = p.parse_args(['catalog', '--url', 'sqlite:///x.db', 'ls'])\n"
        "rc = c.run(args)\n"
        "from neuroscale.catalog.errors import MissingDependencyError\n"
        "try:\n    neuroscale.catalog.Catalog\nexcept MissingDependencyError as e:\n"
        "    print('MSG', e)\n"
        "print('RC', rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "neuroscale[catalog]" in proc.stdout and "RC 2" in proc.stdout
    assert "neuroscale[catalog]" in proc.stderr  # the CLI's one-line error
