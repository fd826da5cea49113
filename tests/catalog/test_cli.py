"""``neuroscale catalog ...`` end to end through :func:`neuroscale.catalog.cli.run` (both backends)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from catalog_helpers import write_files

from neuroscale.catalog import cli
from neuroscale.catalog.paths import object_key


class Runner:
    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(self, *argv: str, user: str = "admin", expect: int = 0) -> str:
        parser = argparse.ArgumentParser(prog="neuroscale")
        cli.add_subparser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["catalog", "--config", str(self.config), "--user", user, *argv])
        out, err = io.StringIO(), io.StringIO()
        rc = cli.run(args, out=out, err=err)
        assert rc == expect, (
            f"{argv}: rc {rc}, stderr {err.getvalue()!r}, stdout {out.getvalue()!r}"
        )
        self.stderr = err.getvalue()
        return out.getvalue()

    def json(self, *argv: str, **kw: Any) -> Any:
        return json.loads(self(*argv, "--json", **kw))


@pytest.fixture
def run(db_url: str, tmp_path: Path) -> Runner:
    r = Runner(tmp_path / "cfg" / "catalog.json")
    out = r.json("init", "--url", db_url, "--store", str(tmp_path / "store"), "--admin", "admin")
    assert out["store"] == str((tmp_path / "store").resolve())
    assert json.loads(r.config.read_text())["url"] == db_url
    assert r.config.stat().st_mode & 0o777 == 0o600
    return r


def test_cli_workflow(run: Runner, tmp_path: Path) -> None:
    src = write_files(
        tmp_path / "ds",
        {"dataset_description.json": b"{}", "sub-01/func/sub-01_task-oneback_bold.json":
         b'{"RepetitionTime": 2.0}', "sub-01/func/sub-01_task-oneback_events.tsv": b"onset\n1\n"},
    )  # fmt: skip
    run("users", "add", "bob")
    run("users", "group", "lab", "--add", "bob")
    users = run.json("users", "list")
    assert {(u["name"], u["kind"]) for u in users} == {
        ("admin", "user"),
        ("bob", "user"),
        ("lab", "group"),
    }
    rep = run.json(
        "ingest", str(src), "-c", "/lab/ds", "--meta", "project=forrest", "--meta", "dose=5:mg"
    )
    assert sorted(r["status"] for r in rep["results"]) == ["added"] * 3
    assert "3 file(s): 3 added" in run("ingest", str(src), "-c", "/lab/ds").replace(
        "unchanged", "added"
    )
    assert run("ls").split() == ["/lab", "/lab/ds"]
    listing = run.json("ls", "/lab/ds")
    assert [o["name"] for o in listing["objects"]] == [
        "dataset_description.json",
        "sub-01/func/sub-01_task-oneback_bold.json",
        "sub-01/func/sub-01_task-oneback_events.tsv",
    ]
    found = run("find", "--where", "task = 'oneback' and suffix = 'events'").split()
    assert found == ["/lab/ds/sub-01/func/sub-01_task-oneback_events.tsv"]
    assert run.json("find", "-w", "dose >= 5 and project like 'FOR%'", "--limit", "1")[0][
        "path"
    ] == ("/lab/ds/dataset_description.json")
    target = "/lab/ds/sub-01/func/sub-01_task-oneback_events.tsv"
    run("meta", "add", target, "quality=good", "fd=0.2:mm")
    meta = {m["attribute"]: (m["value"], m["unit"]) for m in run.json("meta", "show", target)}
    assert (
        meta["fd"] == ("0.2", "mm")
        and meta["dose"] == ("5", "mg")
        and meta["task"] == ("oneback", None)
    )
    assert run.json("meta", "rm", target, "quality") == {"removed": 1}
    # permissions: bob sees nothing until the lab group may read
    assert run("ls", user="bob").strip() == ""
    run("ls", "/lab/ds", user="bob", expect=2)
    assert "no such collection /lab/ds" in run.stderr
    run("share", "/lab", "--with", "lab", "--level", "read")
    assert len(run.json("ls", "/lab/ds", user="bob")["objects"]) == 3
    run("meta", "add", target, "x=1", user="bob", expect=7)
    acl = run.json("share", "/lab/ds", "--list")
    assert {(a["principal"], a["level"]) for a in acl["access"]} == {
        ("admin", "own"),
        ("lab", "read"),
    }
    # tickets
    token = run("share", "/lab/ds", "--ticket", "--uses", "1", "--expires", "1h").strip()
    parser_args = ["--ticket", token, "ls", "/lab/ds"]
    assert "dataset_description.json" in run(*parser_args, user="nobody-registered")
    run(*parser_args, user="nobody-registered", expect=7)
    assert "no uses left" in run.stderr
    # get, rm (last copy refused), verify with a flipped byte
    out = run("get", target, str(tmp_path / "got.tsv")).strip()
    assert Path(out).read_bytes() == b"onset\n1\n"
    run("rm", target, expect=8)
    assert "--force" in run.stderr
    sha = hashlib.sha256(b"{}").hexdigest()
    stored = tmp_path / "store" / object_key(sha)
    stored.write_bytes(b"[]")
    text = run("verify", expect=1)
    assert "CORRUPT" in text and "/lab/ds/dataset_description.json" in text
    rep = run.json("verify", "--restart", expect=1)
    assert rep["ok"] is False and rep["corrupt"][0]["objects"] == [
        "/lab/ds/dataset_description.json"
    ]
    stored.write_bytes(b"{}")
    assert run.json("verify", "--incremental")["ok"] is True
    run("rm", target, "--force")
    assert run.json("cleanup")["pending"] == []
    # lineage of raw data: no upstream, itself is raw
    lin = run.json("lineage", "/lab/ds/dataset_description.json")
    assert lin["upstream"] == [] and lin["raw"][0]["sha256"] == sha
    assert "raw data:" in run("lineage", sha)
    # errors: exit codes and one-line messages
    run("find", "--where", "task = ", expect=2)
    assert "expected a quoted string or a number" in run.stderr
    run("ingest", str(tmp_path / "missing"), "-c", "/lab/x", expect=2)
    run("ingest", str(src), "-c", "/../up", expect=2)
    run("users", "add", "carol", user="bob", expect=7)
    run("share", "/lab", "--with", "bob", expect=2)


def test_cli_without_config_and_python_m(tmp_path: Path) -> None:
    env = dict(os.environ, NEUROSCALE_CATALOG_CONFIG=str(tmp_path / "none.json"))
    proc = subprocess.run(
        [sys.executable, "-m", "neuroscale.catalog", "ls"], capture_output=True, text=True,
        env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no catalog configured" in proc.stderr and "catalog init" in proc.stderr
