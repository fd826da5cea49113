"""BIDS front door: discovery, participant selection, filters, derivative naming."""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from neuroscale.bids import (
    BoldRun,
    code_commit,
    derivative_name,
    derivative_path,
    find_bold_runs,
    list_participants,
    load_bids_filter_file,
    parse_bids_name,
    sanitize_label,
    write_dataset_description,
)
from neuroscale.bids.derivatives import BIDS_VERSION, DERIVATIVE_ENTITY_ORDER
from neuroscale.errors import (
    BIDSError,
    ConfigurationError,
    InputNotFoundError,
    MissingMetadataError,
    NoBoldRunError,
)

EXAMPLES = ["ds001", "ds005", "ds114", "7t_trt", "synthetic"]


# -- helpers (independent of the code under test) ---------------------------------------


def glob_bold(root: Path) -> list[Path]:
    """Every BOLD image under sub-*/ by a plain recursive glob."""
    return sorted(
        p for p in root.glob("sub-*/**/*_bold.nii*")
        if p.name.endswith(("_bold.nii", "_bold.nii.gz"))
    )


def entities_by_regex(name: str) -> dict[str, str]:
    return dict(re.findall(r"([a-zA-Z]+)-([a-zA-Z0-9+]+)_", name))


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_dataset(root: Path, desc: dict | None = None) -> Path:
    touch(root / "dataset_description.json",
          json.dumps(desc if desc is not None else {"Name": "toy", "BIDSVersion": "1.8.0"}))
    return root


@pytest.fixture
def examples(shared_data: Path) -> Path:
    path = shared_data / "bids-examples"
    if not path.is_dir():
        pytest.skip("bids-examples not found")
    return path


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A small dataset exercising the inheritance principle and ignored directories."""
    root = make_dataset(tmp_path / "toy")
    touch(root / "task-rest_bold.json",
          json.dumps({"RepetitionTime": 2.0, "EchoTime": 0.03, "TaskName": "rest"}))
    touch(root / "task-other_bold.json", json.dumps({"RepetitionTime": 9.0}))
    touch(root / "task-rest_acq-fast_bold.json", json.dumps({"RepetitionTime": 0.8}))
    touch(root / "task-rest_events.tsv", "onset\tduration\n")
    # sub-01: two sessions, session-level override, file-level override
    touch(root / "sub-01" / "sub-01_task-rest_bold.json", json.dumps({"RepetitionTime": 1.5}))
    for ses in ("a", "b"):
        func = root / "sub-01" / f"ses-{ses}" / "func"
        touch(func / f"sub-01_ses-{ses}_task-rest_run-1_bold.nii.gz")
        touch(func / f"sub-01_ses-{ses}_task-rest_run-02_bold.nii")
    touch(root / "sub-01" / "ses-b" / "sub-01_ses-b_task-rest_bold.json",
          json.dumps({"EchoTime": 0.025, "SliceEncodingDirection": "k"}))
    touch(root / "sub-01" / "ses-b" / "func" / "sub-01_ses-b_task-rest_run-02_bold.json",
          json.dumps({"EchoTime": 0.02}))
    touch(root / "sub-01" / "ses-b" / "func" / "sub-01_ses-b_task-rest_run-02_events.tsv",
          "onset\tduration\n")
    # sub-02: acq-specific top-level sidecar; a non-BOLD file; an sbref
    func2 = root / "sub-02" / "func"
    touch(func2 / "sub-02_task-rest_acq-fast_bold.nii.gz")
    touch(func2 / "sub-02_task-rest_bold.nii.gz")
    touch(func2 / "sub-02_task-rest_sbref.nii.gz")
    touch(func2 / "sub-02_task-rest_physio.tsv.gz")
    touch(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    # sub-03 exists but has no BOLD
    touch(root / "sub-03" / "anat" / "sub-03_T1w.nii.gz")
    # places that must be ignored
    for ignored in ("derivatives/fmriprep", "sourcedata", "code", ".git", ".datalad"):
        touch(root / ignored / "sub-01" / "func" / "sub-01_task-rest_run-9_bold.nii.gz")
    touch(root / "sub-01" / "ses-a" / "func" / ".sub-01_ses-a_task-rest_run-3_bold.nii.gz")
    return root


# -- discovery on the real studyforrest dataset -----------------------------------------


def test_studyforrest(studyforrest_bold: Path) -> None:
    root = studyforrest_bold.parents[2]
    runs = find_bold_runs(root)
    assert len(runs) == 1
    run = runs[0]
    assert run.path == studyforrest_bold.resolve()
    assert run.entities == {"sub": "02", "task": "oneback", "run": "1"}
    assert str(run.relpath) == "sub-02/func/sub-02_task-oneback_run-1_bold.nii.gz"
    assert run.bids_uri() == "bids:raw:sub-02/func/sub-02_task-oneback_run-1_bold.nii.gz"
    own = json.loads(studyforrest_bold.with_name(
        "sub-02_task-oneback_run-1_bold.json").read_text())
    assert run.sidecar == own
    assert run.t_r == 2.0 == own["RepetitionTime"]
    assert run.events == studyforrest_bold.resolve().with_name("sub-02_task-oneback_run-1_events.tsv")
    assert run.confounds is None
    assert run.subject == "02" and run.session is None and run.extension == ".nii.gz"
    # labels with or without sub-; sourcedata/ (dcm2niix raw json) is never looked at
    assert find_bold_runs(root, ["sub-02"]) == runs == find_bold_runs(root, "02")
    with pytest.raises(BIDSError, match="99"):
        find_bold_runs(root, ["02", "99"])
    with pytest.raises(NoBoldRunError, match="02"):
        find_bold_runs(root, ["02"], {"task": "rest"})


# -- bids-examples layouts: counts against an independent glob ---------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_match_glob(examples: Path, name: str) -> None:
    root = examples / name
    runs = find_bold_runs(root)
    expected = glob_bold(root)
    assert expected, "the glob found nothing: fixture data missing?"
    assert sorted(r.path for r in runs) == sorted(p.resolve() for p in expected)
    for run in runs:
        assert run.entities == entities_by_regex(run.path.name)
        assert run.path.is_relative_to(root.resolve())
        assert "derivatives" not in run.relpath.parts
    # participants: every sub-* directory
    subs = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
    assert sorted(list_participants(root)) == subs


def test_inheritance_top_level_sidecars(examples: Path) -> None:
    # ds001: a single top-level task JSON applies to every run
    root = examples / "ds001"
    top = json.loads((root / "task-balloonanalogrisktask_bold.json").read_text())
    for run in find_bold_runs(root):
        assert run.sidecar == top
        assert run.t_r == top["RepetitionTime"]
        assert run.events == run.path.with_name(
            run.path.name.replace("_bold.nii.gz", "_events.tsv"))
    # 7t_trt: acq-specific top-level files; each run gets its own acq's metadata
    root = examples / "7t_trt"
    tops = {acq: json.loads((root / f"task-rest_acq-{acq}_bold.json").read_text())
            for acq in ("fullbrain", "prefrontal")}
    runs = find_bold_runs(root)
    assert {r.entities["acq"] for r in runs} == set(tops)
    for run in runs:
        assert run.sidecar == tops[run.entities["acq"]]
    # synthetic: events only at top level for nback; rest runs have none
    root = examples / "synthetic"
    for run in find_bold_runs(root):
        if run.entities["task"] == "nback":
            assert run.events == root.resolve() / "task-nback_events.tsv"
        else:
            assert run.events is None


def test_sessions_ds114(examples: Path) -> None:
    root = examples / "ds114"
    runs = find_bold_runs(root, filters={"session": "test"})
    expected = [p for p in glob_bold(root) if "_ses-test_" in p.name]
    assert len(runs) == len(expected) == 50
    assert all(r.session == "test" and r.path.parent.parent.name == "ses-test" for r in runs)
    assert len(find_bold_runs(root, filters={"session": ["test", "retest"]})) == 100
    assert len(find_bold_runs(root, filters={"session": "*"})) == 100
    with pytest.raises(NoBoldRunError, match="ses"):
        find_bold_runs(root, filters={"session": None})


def test_participant_selection(examples: Path) -> None:
    root = examples / "ds005"
    runs = find_bold_runs(root, ["sub-01", "02", "sub-02"])
    expected = [p for p in glob_bold(root) if p.name.startswith(("sub-01_", "sub-02_"))]
    assert sorted(r.path for r in runs) == sorted(p.resolve() for p in expected)
    assert {r.subject for r in runs} == {"01", "02"}
    with pytest.raises(BIDSError, match=r"77.*available: 01, 02"):
        find_bold_runs(root, ["01", "sub-77"])
    # empty selection means everyone
    assert len(find_bold_runs(root, [])) == len(glob_bold(root))


def test_filters_index_and_lists(examples: Path) -> None:
    root = examples / "ds001"
    run1 = find_bold_runs(root, filters={"bold": {"run": 1}})  # matches run-01
    assert sorted(r.path for r in run1) == sorted(
        p.resolve() for p in glob_bold(root) if "_run-01_" in p.name)
    both = find_bold_runs(root, filters={"run": [1, "3"], "subject": "01"})
    assert [r.entities["run"] for r in both] == ["01", "03"]
    assert find_bold_runs(root, filters={"extension": "nii.gz"})
    with pytest.raises(NoBoldRunError):
        find_bold_runs(root, filters={"extension": ".nii"})
    root = examples / "7t_trt"
    fb = find_bold_runs(root, ["01"], {"acquisition": ["fullbrain"], "run": 2})
    assert [str(r.relpath) for r in fb] == [
        "sub-01/ses-1/func/sub-01_ses-1_task-rest_acq-fullbrain_run-2_bold.nii.gz",
        "sub-01/ses-2/func/sub-01_ses-2_task-rest_acq-fullbrain_run-2_bold.nii.gz",
    ]
    no_run = find_bold_runs(root, ["01"], {"run": None})
    assert all(r.entities["acq"] == "prefrontal" for r in no_run) and len(no_run) == 2


def test_fmriprep_derivatives_confounds(examples: Path) -> None:
    root = examples / "ds000001-fmriprep"
    runs = find_bold_runs(root)
    assert len(runs) == len(glob_bold(root))
    preproc = find_bold_runs(root, filters={"bold": {
        "space": "MNI152NLin2009cAsym", "desc": "preproc", "res": "2"}})
    expected = [p for p in glob_bold(root)
                if "_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold" in p.name]
    assert len(preproc) == len(expected) > 0
    for run in runs:
        conf = run.path.parent / (
            f"sub-{run.subject}_task-{run.entities['task']}_run-{run.entities['run']}"
            "_desc-confounds_timeseries.tsv")
        assert run.confounds == conf and conf.is_file()
    for run in preproc:
        assert run.sidecar == json.loads(
            run.path.with_name(run.path.name.replace(".nii.gz", ".json")).read_text())


def test_toy_inheritance_and_ignores(toy: Path, caplog: pytest.LogCaptureFixture) -> None:
    runs = find_bold_runs(toy)
    rel = [str(r.relpath) for r in runs]
    assert rel == [
        "sub-01/ses-a/func/sub-01_ses-a_task-rest_run-1_bold.nii.gz",
        "sub-01/ses-a/func/sub-01_ses-a_task-rest_run-02_bold.nii",
        "sub-01/ses-b/func/sub-01_ses-b_task-rest_run-1_bold.nii.gz",
        "sub-01/ses-b/func/sub-01_ses-b_task-rest_run-02_bold.nii",
        "sub-02/func/sub-02_task-rest_acq-fast_bold.nii.gz",
        "sub-02/func/sub-02_task-rest_bold.nii.gz",
    ]
    by = {str(r.relpath): r for r in runs}
    a1 = by["sub-01/ses-a/func/sub-01_ses-a_task-rest_run-1_bold.nii.gz"]
    assert a1.sidecar == {"RepetitionTime": 1.5, "EchoTime": 0.03, "TaskName": "rest"}
    assert [p.name for p in a1.sidecar_files] == ["task-rest_bold.json",
                                                  "sub-01_task-rest_bold.json"]
    b2 = by["sub-01/ses-b/func/sub-01_ses-b_task-rest_run-02_bold.nii"]
    assert b2.sidecar == {"RepetitionTime": 1.5, "EchoTime": 0.02, "TaskName": "rest",
                          "SliceEncodingDirection": "k"}
    assert b2.events is not None and b2.events.parent.name == "func"
    assert a1.events == toy.resolve() / "task-rest_events.tsv"
    assert b2.extension == ".nii" and a1.extension == ".nii.gz"
    fast = by["sub-02/func/sub-02_task-rest_acq-fast_bold.nii.gz"]
    assert fast.t_r == 0.8 and fast.entities["acq"] == "fast"
    assert by["sub-02/func/sub-02_task-rest_bold.nii.gz"].t_r == 2.0
    # sub-03 has no BOLD: selecting it alone is a NoBoldRunError naming it
    with pytest.raises(NoBoldRunError, match="03"):
        find_bold_runs(toy, ["03"])
    # ...and selecting it with others only warns
    with caplog.at_level("WARNING", logger="neuroscale.bids.layout"):
        assert {r.subject for r in find_bold_runs(toy, ["01", "03"])} == {"01"}
    assert "03" in caplog.text
    # BoldRun travels to Dask workers
    again = pickle.loads(pickle.dumps(runs))
    assert again == runs and isinstance(again[0], BoldRun)


def test_t_r_absent_and_invalid(toy: Path) -> None:
    (toy / "task-rest_bold.json").write_text(json.dumps({"EchoTime": 0.03}))
    (toy / "task-rest_acq-fast_bold.json").unlink()
    (toy / "sub-01" / "sub-01_task-rest_bold.json").write_text(
        json.dumps({"RepetitionTime": "2s"}))
    runs = {str(r.relpath): r for r in find_bold_runs(toy)}
    assert runs["sub-02/func/sub-02_task-rest_bold.nii.gz"].t_r is None
    with pytest.raises(MissingMetadataError, match="RepetitionTime"):
        _ = runs["sub-01/ses-a/func/sub-01_ses-a_task-rest_run-1_bold.nii.gz"].t_r


def test_dataset_errors(tmp_path: Path, toy: Path) -> None:
    with pytest.raises(InputNotFoundError):
        find_bold_runs(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BIDSError, match=re.escape(str(empty)) + ".*dataset_description"):
        find_bold_runs(empty)
    for desc, what in (({"Name": "x"}, "BIDSVersion"), ({"BIDSVersion": "1.8.0"}, "Name"),
                       ({"Name": "", "BIDSVersion": "1.0"}, "Name")):
        d = make_dataset(tmp_path / f"bad{what}{len(desc)}", desc)
        with pytest.raises(BIDSError, match=what) as info:
            find_bold_runs(d)
        assert "\n" not in str(info.value) and str(d) in str(info.value)
    d = tmp_path / "badjson"
    touch(d / "dataset_description.json", "{not json")
    with pytest.raises(BIDSError, match="valid JSON"):
        find_bold_runs(d)
    with pytest.raises(BIDSError, match="not a directory"):
        find_bold_runs(toy / "dataset_description.json")
    # a broken sidecar names the file
    touch(toy / "sub-02" / "func" / "sub-02_task-rest_bold.json", "{oops")
    with pytest.raises(BIDSError, match="sub-02_task-rest_bold.json"):
        find_bold_runs(toy, ["02"])


def test_filter_file(tmp_path: Path, examples: Path) -> None:
    f = touch(tmp_path / "filter.json", json.dumps({
        "bold": {"task": "balloonanalogrisktask", "run": 2, "session": None,
                 "acquisition": [None, "x"], "suffix": "bold", "datatype": "func"},
        "t1w": {"reconstruction": None},
    }))
    loaded = load_bids_filter_file(f)
    assert loaded["bold"] == {"task": "balloonanalogrisktask", "run": "2", "ses": None,
                              "acq": [None, "x"], "suffix": "bold", "datatype": "func"}
    assert loaded["t1w"] == {"rec": None}
    root = examples / "ds001"
    runs = find_bold_runs(root, ["01", "02"], loaded)
    assert [str(r.relpath) for r in runs] == [
        "sub-01/func/sub-01_task-balloonanalogrisktask_run-02_bold.nii.gz",
        "sub-02/func/sub-02_task-balloonanalogrisktask_run-02_bold.nii.gz",
    ]
    with pytest.raises(NoBoldRunError, match="balloon"):
        find_bold_runs(root, filters={"bold": {"task": "balloon"}})

    bad = {
        "json": "{bold: }",
        "entity": json.dumps({"bold": {"colour": "red"}}),
        "query": json.dumps({"boldd": {"task": "x"}}),
        "list": json.dumps([{"task": "x"}]),
        "value": json.dumps({"bold": {"task": {"a": 1}}}),
        "bool": json.dumps({"bold": {"run": True}}),
        "notobj": json.dumps({"bold": ["task"]}),
    }
    for what, text in bad.items():
        with pytest.raises(ConfigurationError) as info:
            load_bids_filter_file(touch(tmp_path / f"{what}.json", text))
        assert str(tmp_path) in str(info.value), what
    with pytest.raises(ConfigurationError, match="colour"):
        load_bids_filter_file(tmp_path / "entity.json")
    with pytest.raises(InputNotFoundError):
        load_bids_filter_file(tmp_path / "missing.json")
    with pytest.raises(ConfigurationError):
        find_bold_runs(root, filters={"colour": "red"})


def test_parse_bids_name() -> None:
    assert parse_bids_name("sub-01_ses-1_task-rest_run-02_bold.nii.gz") == (
        {"sub": "01", "ses": "1", "task": "rest", "run": "02"}, "bold", ".nii.gz")
    assert parse_bids_name("task-rest_bold.json") == ({"task": "rest"}, "bold", ".json")
    assert parse_bids_name("dataset_description.json") is None
    assert parse_bids_name("sub-01_sub-02_bold.nii") is None
    assert parse_bids_name(".sub-01_bold.nii") is None


# -- derivative names ----------------------------------------------------------------------


def test_derivative_names_brief_examples() -> None:
    e = {"sub": "02", "task": "oneback", "run": "1"}
    out = Path("OUT")
    assert derivative_path(out, e, suffix="boldmap", extension=".nii.gz", stat="alff") == (
        out / "sub-02/func/sub-02_task-oneback_run-1_stat-alff_boldmap.nii.gz")
    assert derivative_path(out, e, suffix="mask", extension=".nii.gz", desc="brain").name == (
        "sub-02_task-oneback_run-1_desc-brain_mask.nii.gz")
    assert derivative_name(e, suffix="bold", extension=".json", desc="qc") == (
        "sub-02_task-oneback_run-1_desc-qc_bold.json")
    assert derivative_name(e, suffix="timeseries", extension=".tsv", atlas="X",
                           stat="mean") == "sub-02_task-oneback_run-1_atlas-X_stat-mean_timeseries.tsv"
    assert derivative_name(e, suffix="relmat", extension=".tsv", atlas="X",
                           stat="pearsoncorrelation") == (
        "sub-02_task-oneback_run-1_atlas-X_stat-pearsoncorrelation_relmat.tsv")
    ses = {"sub": "01", "ses": "retest", "task": "rest", "acq": "fullbrain", "run": "02"}
    assert derivative_path(out, ses, suffix="boldmap", extension=".nii.gz", stat="reho") == (
        out / "sub-01/ses-retest/func/"
              "sub-01_ses-retest_task-rest_acq-fullbrain_run-02_stat-reho_boldmap.nii.gz")


def test_derivative_entity_order() -> None:
    # every entity at once, given in a random order: the name follows BIDS/XCP-D order
    full = {k: (str(i + 1) if k in ("run", "echo", "flip", "inv", "split", "chunk", "cohort")
                else f"v{i}") for i, k in enumerate(DERIVATIVE_ENTITY_ORDER)}
    items = list(full.items())
    random.Random(0).shuffle(items)
    name = derivative_name(dict(items), suffix="boldmap", extension=".nii.gz",
                           inherit_desc=True)
    keys = [part.split("-")[0] for part in name.split("_")[:-1]]
    assert keys == list(DERIVATIVE_ENTITY_ORDER)
    assert keys.index("ses") < keys.index("task") < keys.index("acq") < keys.index("ce") \
        < keys.index("rec") < keys.index("dir") < keys.index("run") < keys.index("echo") \
        < keys.index("space") < keys.index("atlas") < keys.index("stat") < keys.index("desc")


def test_derivative_from_fmriprep_source() -> None:
    src = {"sub": "10", "task": "balloon", "run": "1", "space": "MNI152NLin2009cAsym",
           "res": "2", "desc": "preproc"}
    assert derivative_name(src, suffix="boldmap", extension=".nii.gz", stat="alff") == (
        "sub-10_task-balloon_run-1_space-MNI152NLin2009cAsym_res-2_stat-alff_boldmap.nii.gz")
    assert derivative_name(src, suffix="bold", extension=".nii.gz", inherit_desc=True) == (
        "sub-10_task-balloon_run-1_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz")
    # overrides: None removes, long names accepted, ints allowed
    assert derivative_name(src, suffix="mask", extension=".nii.gz", res=None, run=3,
                           description="brain", **{"from": "T1w"}) == (
        "sub-10_task-balloon_run-3_space-MNI152NLin2009cAsym_from-T1w_desc-brain_mask.nii.gz")
    assert derivative_name(src, suffix="boldmap", extension=".nii.gz", seed="1",
                           stat="fisherz", res=None) == (
        "sub-10_task-balloon_run-1_space-MNI152NLin2009cAsym_seed-1_stat-fisherz_boldmap.nii.gz")
    assert sanitize_label("HarvardOxford-cort_maxprob thr0") == "HarvardOxfordcortmaxprobthr0"


def test_derivative_name_errors() -> None:
    e = {"sub": "02", "task": "oneback"}
    for kwargs in ({"atlas": "Harvard-Oxford"}, {"colour": "red"}, {"run": "one"},
                   {"stat": True}, {"stat": 1.5}):
        with pytest.raises(ConfigurationError):
            derivative_name(e, suffix="boldmap", extension=".nii.gz", **kwargs)
    with pytest.raises(ConfigurationError, match="sub"):
        derivative_name({"task": "x"}, suffix="bold", extension=".json")
    with pytest.raises(ConfigurationError):
        derivative_name(e, suffix="bold_map", extension=".nii.gz")
    with pytest.raises(ConfigurationError):
        derivative_name(e, suffix="bold", extension="nii.gz")
    with pytest.raises(ConfigurationError):
        derivative_path("OUT", e, suffix="bold", extension=".nii", datatype="../x")
    with pytest.raises(ConfigurationError):
        sanitize_label("-_-")


# -- dataset_description.json ------------------------------------------------------------


def _git_head(repo: Path) -> str | None:
    if shutil.which("git") is None:
        return None
    res = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                         capture_output=True, text=True, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def test_write_dataset_description(tmp_path: Path, examples: Path) -> None:
    out = tmp_path / "deriv"
    raw = examples / "ds001"
    other = examples / "ds000001-fmriprep"
    path = write_dataset_description(out, [raw, other], version="9.9.9",
                                     code_url="https://example.org/neuroscale", commit="abc123")
    assert path == out / "dataset_description.json"
    assert sorted(p.name for p in out.iterdir()) == ["dataset_description.json"]  # no temp
    desc = json.loads(path.read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["BIDSVersion"] == BIDS_VERSION and desc["Name"]
    gen = desc["GeneratedBy"]
    assert isinstance(gen, list) and gen[0]["Name"] == "neuroscale"
    assert gen[0]["Version"] == "9.9.9" and gen[0]["CodeURL"] == "https://example.org/neuroscale"
    assert "abc123" in gen[0]["Description"]
    assert set(gen[0]) <= {"Name", "Version", "Description", "CodeURL", "Container"}
    ds001_doi = json.loads((raw / "dataset_description.json").read_text())["DatasetDOI"]
    assert desc["SourceDatasets"] == [
        {"URL": raw.resolve().as_uri(), "DOI": "doi:" + ds001_doi},
        {"URL": other.resolve().as_uri()},
    ]
    assert desc["DatasetLinks"] == {"raw": raw.resolve().as_uri(),
                                    "ds000001fmriprep": other.resolve().as_uri()}
    # the written dataset is itself a valid BIDS root for our reader
    from neuroscale.bids import read_dataset_description
    assert read_dataset_description(out)["DatasetType"] == "derivative"
    # overwrite in place, mapping form, default version, no commit
    import neuroscale
    write_dataset_description(out, {"raw": raw}, commit=None)
    desc = json.loads(path.read_text())
    assert desc["GeneratedBy"][0]["Version"] == neuroscale.__version__
    assert "commit" not in desc["GeneratedBy"][0]["Description"]
    with pytest.raises(InputNotFoundError):
        write_dataset_description(out, [tmp_path / "missing"])
    with pytest.raises(ConfigurationError):
        write_dataset_description(out, {"bad:name": raw})


def test_code_commit(tmp_path: Path) -> None:
    import neuroscale

    pkg = Path(neuroscale.__file__).resolve().parent
    head = _git_head(pkg)
    commit = code_commit()
    if head is None:
        assert commit is None
    else:
        assert commit is not None and commit.split("-")[0] == head
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)
    # not a git checkout -> None, no crash
    assert code_commit(tmp_path) is None
    # a checkout that is not this package's source tree -> None (guard)
    if head is not None:
        assert code_commit(pkg / "bids") is None
    # automatic commit ends up in the description when available
    out = write_dataset_description(tmp_path / "d", [tmp_path])
    text = json.loads(out.read_text())["GeneratedBy"][0]["Description"]
    assert (commit in text) if commit else ("commit" not in text)


def test_find_t1w_prefers_same_session_and_plain_acquisition(tmp_path: Path) -> None:
    from neuroscale.bids.layout import find_t1w

    sub = tmp_path / "sub-01"
    for rel in ("anat/sub-01_T1w.nii.gz", "anat/sub-01_acq-mprage_T1w.nii.gz",
                "ses-2/anat/sub-01_ses-2_T1w.nii", "anat/sub-01_T2w.nii.gz",
                "anat/sub-01_T1w.json"):
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        (sub / rel).write_bytes(b"")
    assert find_t1w(tmp_path, "01") == sub / "anat" / "sub-01_T1w.nii.gz"
    assert find_t1w(tmp_path, "01", session="2") == sub / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii"
    assert find_t1w(tmp_path, "02") is None


def test_find_t1w_real_example() -> None:
    from neuroscale.bids.layout import find_t1w

    root = Path(__file__).resolve().parents[1] / "examples" / "ds-studyforrest-oneback"
    assert find_t1w(root, "02") == root / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
