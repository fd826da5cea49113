"""Hostile use of the catalog (issue 11, "Catalog"), through ``neuroscale catalog ...`` as a user runs it.

Every case builds its own catalog in its directory (``catalog init --url sqlite:///... --store ...``,
the configuration file named by ``$NEUROSCALE_CATALOG_CONFIG``), switches users with ``--user``
(``$NEUROSCALE_CATALOG_USER`` for the pipeline), as the catalog CLI does, and asserts the exit code,
the one error line (or the answer of a command that must succeed) and that no traceback is shown.
What only prepares a case or inspects its outcome (registering users, an earlier ingest, listing)
goes through the Python API in-process: each command line costs a second or more.  Deeper checks of the same behaviour: ``tests/catalog/test_privacy_and_failures.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.hostile.harness import (
    BOLD_REL,
    FAST,
    Case,
    CliResult,
    check_failure,
    check_success,
    neuroscale_command,
    run_cli,
    small_bids,
)

pytest.importorskip("sqlalchemy", reason="the catalog needs the [catalog] extra")
from neuroscale.catalog.api import Catalog

SECRET = b"alice's private recording, sub-07\n" * 8
WRONG = b"alice's private recording, sub-08\n" * 8
NFD = unicodedata.normalize("NFD", "café_bold.json")
NFC = unicodedata.normalize("NFC", "café_bold.json")
#: unprivileged account a case runs as when the tests run as root (root ignores file modes)
UNPRIVILEGED = 65534


@dataclass
class CatalogCase(Case):
    """A :class:`Case` whose last command may run as an unprivileged OS user (``as_nobody``),
    where the tests run as root, so that file permissions apply."""

    as_nobody: bool = False
    #: the catalog user of a pipeline run (``$NEUROSCALE_CATALOG_USER``)
    user: str | None = None


def env_of(root: Path, user: str | None = None) -> dict[str, str]:
    out = {"NEUROSCALE_CATALOG_CONFIG": str(root / "catalog.json")}
    if user is not None:
        out["NEUROSCALE_CATALOG_USER"] = user
    return out


def url_of(root: Path) -> str:
    return f"sqlite:///{root / 'catalog.sqlite'}"


def cat(root: Path, *args: object, user: str = "admin", ok: bool = True) -> CliResult:
    """``neuroscale catalog --user USER ARGS`` on the case's catalog (must succeed when ``ok``)."""
    result = run_cli(["catalog", "--user", user, *map(str, args)], env=env_of(root), timeout=120)
    if ok:
        check_success(result)
    return result


def init(root: Path, *users: str) -> None:
    cat(root, "init", "--url", url_of(root), "--store", root / "store", "--admin", "admin")
    with Catalog(url_of(root), user="admin") as admin:
        for user in users:
            admin.add_user(user)


@contextlib.contextmanager
def as_user(root: Path, user: str) -> Iterator[Catalog]:
    """The case's catalog through the Python API, acting as ``user``."""
    with Catalog(url_of(root), user=user) as c:
        yield c


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "store" / "objects").rglob("*") if p.is_file())


# -- the cases -------------------------------------------------------------------------------------
def make_read_only_store(root: Path) -> Sequence[str]:
    init(root, "alice")
    src = root / "src"
    with as_user(root, "alice") as alice:
        alice.ingest(write(src / "f0.bin", b"ingested before"), "/home/alice/c")
    write(src / "f1.bin", b"ingested while the store is read-only")
    for path in [root / "store", *(root / "store").rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)
    return ["catalog", "--user", "alice", "ingest", str(src), "-c", "/home/alice/c"]


def check_read_only_store(root: Path, result: CliResult) -> None:
    for path in [root / "store", *(root / "store").rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    # the database stayed consistent: the committed object only, no claim left behind
    with as_user(root, "admin") as admin:
        assert [o.name for o in admin.ls("/home/alice/c").objects] == ["f0.bin"]
        report = admin.verify()
        assert report.ok and report.pending == [] and report.checked == 1
        again = admin.as_user("alice").ingest(root / "src", "/home/alice/c")
        assert again.counts == {"added": 1, "unchanged": 1}


def make_missing_stored_copy(root: Path) -> Sequence[str]:
    init(root, "alice")
    with as_user(root, "alice") as alice:
        alice.ingest(write(root / "a.txt", b"alpha"), "/home/alice/c")
    files = stored_files(root)
    assert len(files) == 1
    files[0].unlink()
    return ["catalog", "--user", "alice", "get", "/home/alice/c/a.txt", str(root / "out.txt")]


def check_nothing_got(root: Path, result: CliResult) -> None:
    assert not (root / "out.txt").exists()


def make_ingest(kind: str) -> Callable[[Path], Sequence[str]]:
    def make(root: Path) -> Sequence[str]:
        init(root, "alice")
        if kind == "dev-zero":
            target = Path("/dev/zero")
        elif kind == "fifo":
            target = root / "sub-02_task-x_bold.nii.gz"
            os.mkfifo(target)
        else:
            target = root / "sub-02_task-y_bold.nii.gz"
            target.symlink_to("/dev/zero")
        return ["catalog", "--user", "alice", "ingest", str(target), "-c", "/home/alice/c"]

    return make


def check_nothing_stored(root: Path, result: CliResult) -> None:
    assert "skipped" in result.stdout and stored_files(root) == []


def make_read_only_database(root: Path) -> Sequence[str]:
    init(root, "alice")
    read_only = f"sqlite:///file:{root / 'catalog.sqlite'}?mode=ro&uri=true"
    return ["catalog", "--url", read_only, "--user", "alice", "mkcoll", "/home/alice/x"]


def make_get_to_unwritable(root: Path) -> Sequence[str]:
    init(root, "alice")
    with as_user(root, "alice") as alice:
        alice.ingest(write(root / "a.txt", b"alpha"), "/home/alice/c")
    return ["catalog", "--user", "alice", "get", "/home/alice/c/a.txt", "/proc/neuroscale-get.txt"]


def make_rm_guess(which: str) -> Callable[[Path], Sequence[str]]:
    """Bob removes (without --force) his copy of a right or a wrong guess of alice's file."""

    def make(root: Path) -> Sequence[str]:
        init(root, "alice", "bob")
        with as_user(root, "alice") as alice:
            alice.ingest(write(root / "a" / "secret.bin", SECRET), "/home/alice/p")
            data = SECRET if which == "right" else WRONG
            alice.as_user("bob").ingest(write(root / "b" / "guess.bin", data), "/home/bob/g")
        return ["catalog", "--user", "bob", "rm", "/home/bob/g/guess.bin"]

    return make


def make_pipeline(collection: str | None) -> Callable[[Path], Sequence[str]]:
    def make(root: Path) -> Sequence[str]:
        init(root, "alice", "bob")
        with as_user(root, "alice") as alice:
            alice.create_collection("/home/alice/neuroscale")
            alice.create_collection("/lab")
            alice.grant("/lab", "bob", "read")
        extra = ["--catalog-collection", collection] if collection else []
        return [str(root / "bids"), str(root / "out"), "participant", *FAST, "--no-report",
                "--catalog", url_of(root), *extra]  # fmt: skip

    return make


def check_no_work(root: Path, result: CliResult) -> None:
    assert not (root / "out" / "sub-02").exists(), "the run computed before failing"


FAILURES = [
    CatalogCase("store-read-only-mid-ingest", make_read_only_store, exit_code=6,
                message=r"cannot (write|create) .*\((Permission denied|Read-only file system)\)",
                names="store", check=check_read_only_store, as_nobody=True),
    CatalogCase("get-missing-stored-copy", make_missing_stored_copy, exit_code=3,
                message=r"stored copy of /home/alice/c/a\.txt .* is missing from the store: run "
                r"'neuroscale catalog verify'", names="store", check=check_nothing_got),
    CatalogCase("database-read-only", make_read_only_database, exit_code=6,
                message=r"the catalog database failed: attempt to write a readonly database"),
    CatalogCase("get-into-unwritable-destination", make_get_to_unwritable, exit_code=2,
                message=r"cannot write the copy \(.*\); nothing written",
                names="/proc/neuroscale-get.txt"),
    CatalogCase("ingest-dev-zero", make_ingest("dev-zero"), exit_code=2,
                message=r"skipped, not a regular file \(character device\); nothing ingested",
                names="/dev/zero", check=check_nothing_stored),
    CatalogCase("ingest-fifo", make_ingest("fifo"), exit_code=2,
                message=r"skipped, not a regular file \(named pipe\); nothing ingested",
                names="sub-02_task-x_bold.nii.gz", check=check_nothing_stored),
    CatalogCase("ingest-symlink-to-dev-zero", make_ingest("symlink"), exit_code=2,
                message=r"not a regular file \(character device behind a symlink\)",
                names="sub-02_task-y_bold.nii.gz", check=check_nothing_stored),
    # the oracle of "rm": the same refusal whether or not someone else holds the content
    CatalogCase("rm-right-guess-of-private-content", make_rm_guess("right"), exit_code=8,
                message=r"/home/bob/g/guess\.bin holds the last copy of its content you can read "
                r"\(sha256 [0-9a-f]{64}\); use --force", names="/home/bob/g/guess.bin"),
    CatalogCase("rm-wrong-guess-of-private-content", make_rm_guess("wrong"), exit_code=8,
                message=r"/home/bob/g/guess\.bin holds the last copy of its content you can read "
                r"\(sha256 [0-9a-f]{64}\); use --force", names="/home/bob/g/guess.bin"),
    # the pipeline checks, before any work, that its results can be registered
    CatalogCase("pipeline-collection-of-another-user", make_pipeline("/home/alice/neuroscale"),
                exit_code=2, message=r"--catalog: results cannot be registered in "
                r"/home/alice/neuroscale: no such collection", names="/home/alice/neuroscale",
                check=check_no_work, user="bob"),
    CatalogCase("pipeline-collection-read-only", make_pipeline("/lab"), exit_code=2,
                message=r"results cannot be registered in /lab: write permission on /lab required "
                r"\(you have read\)", names="/lab", check=check_no_work, user="bob"),
    CatalogCase("pipeline-unregistered-user", make_pipeline(None), exit_code=2,
                message=r"cannot be registered in /home/mallory/neuroscale: user 'mallory' is not "
                r"registered", names="mallory", check=check_no_work, user="mallory"),
]  # fmt: skip


@contextlib.contextmanager
def case_root(tmp_path: Path, as_nobody: bool) -> Iterator[Path]:
    """The case's directory; one an unprivileged user can use when the case runs as one."""
    if not (as_nobody and os.geteuid() == 0):
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="ns-hostile-catalog-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_as_nobody(root: Path, args: Sequence[str]) -> CliResult:
    for path in [root, *root.rglob("*")]:
        os.chown(path, UNPRIVILEGED, UNPRIVILEGED, follow_symlinks=False)
    env = {**os.environ, "NO_COLOR": "1", **env_of(root), "HOME": str(root)}
    setpriv = shutil.which("setpriv")  # util-linux; Popen(user=...) is refused the interpreter
    if setpriv is None:
        pytest.skip("running as root and no setpriv to drop to an unprivileged user")
    drop = [setpriv, f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups"]
    proc = subprocess.run([*drop, *neuroscale_command(), *args], capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
    return CliResult(list(args), proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("case", FAILURES, ids=lambda c: c.id)
def test_catalog_failures(tmp_path: Path, case: CatalogCase) -> None:
    with case_root(tmp_path, case.as_nobody) as root:
        if case.id.startswith("pipeline-"):
            small_bids(root, n_volumes=20, with_t1w=False)
        args = list(case.make(root))
        if case.as_nobody and os.geteuid() == 0:
            result = run_as_nobody(root, args)
        else:
            result = run_cli(args, env=env_of(root, case.user), timeout=case.timeout)
        check_failure(dataclasses.replace(case, check=None), result, None)
        if case.check is not None:
            case.check(root, result)


# -- what must succeed, and say the same whoever holds the content ---------------------------------
def make_dedup_guesses(root: Path) -> Sequence[str]:
    """Alice holds a private file; bob ingests a right guess of it (kept), then a wrong one."""
    init(root, "alice", "bob")
    with as_user(root, "alice") as alice:
        alice.ingest(write(root / "a" / "secret.bin", SECRET), "/home/alice/p")
    right = cat(root, "ingest", write(root / "b" / "right.bin", SECRET), "-c", "/home/bob/g",
                user="bob")  # fmt: skip
    (root / "right.out").write_text(right.stdout.replace("right.bin", "NAME"))
    write(root / "b" / "wrong.bin", WRONG)
    return ["catalog", "--user", "bob", "ingest", str(root / "b" / "wrong.bin"), "-c", "/home/bob/g"]


def check_dedup_guesses(root: Path, result: CliResult) -> None:
    wrong = result.stdout.replace("wrong.bin", "NAME")
    assert (root / "right.out").read_text() == wrong == (
        "added        /home/bob/g/NAME\n1 file(s): 1 added\n")
    assert len(stored_files(root)) == 2  # the right guess was stored once (silently)
    with as_user(root, "bob") as bob:  # bob's own object; alice's stays invisible to him
        assert bob.collections() == ["/home/bob", "/home/bob/g"]
        assert bob.get("/home/bob/g/right.bin", root / "got.bin").read_bytes() == SECRET


def make_nfd_then_nfc(root: Path) -> Sequence[str]:
    init(root, "alice")
    cat(root, "ingest", write(root / "d" / NFD, b'{"RepetitionTime": 2}'), "-c",
        unicodedata.normalize("NFD", "/home/alice/étude"), "--meta",
        unicodedata.normalize("NFD", "site=Zürich"), user="alice")  # fmt: skip
    return ["catalog", "--user", "alice", "ingest", str(write(root / "c" / NFC, b'{"RepetitionTime": 2}')),
            "-c", unicodedata.normalize("NFC", "/home/alice/étude")]  # fmt: skip


def check_nfd_then_nfc(root: Path, result: CliResult) -> None:
    assert "1 file(s): 1 unchanged" in result.stdout
    with as_user(root, "alice") as alice:
        assert [o.name for o in alice.ls(unicodedata.normalize("NFD", "/home/alice/étude")).objects
                ] == [NFC]  # fmt: skip
        found = [o.path for o in alice.find(unicodedata.normalize("NFD", "site = 'Zürich'"))]
    assert found == [unicodedata.normalize("NFC", f"/home/alice/étude/{NFC}")]


def make_pipeline_after_squat(root: Path) -> Sequence[str]:
    """Eve took the old fixed ``/neuroscale``; bob's pipeline run registers in his home."""
    init(root, "eve", "bob", "alice")
    with as_user(root, "eve") as eve:
        eve.create_collection("/neuroscale")
    return [str(root / "bids"), str(root / "out"), "participant", *FAST, "--no-report",
            "--catalog", url_of(root)]  # fmt: skip


def check_pipeline_after_squat(root: Path, result: CliResult) -> None:
    (tsnr,) = (root / "out").rglob("*stat-tsnr_boldmap.nii.gz")
    with as_user(root, "bob") as bob:
        assert "/home/bob/neuroscale/sources" in bob.ls("/home/bob/neuroscale").subcollections
        assert bob.lineage(tsnr).upstream
        # alice ingests a copy of bob's result: her lineage shows raw data only
        bob.as_user("alice").ingest(tsnr, "/home/alice/copy")
    lineage = cat(root, "lineage", f"/home/alice/copy/{tsnr.name}", user="alice").stdout
    assert "derived from" not in lineage and "raw data:" in lineage
    assert str(BOLD_REL.name) not in lineage


SUCCESSES = [
    CatalogCase("dedup-right-and-wrong-guess-answered-alike", make_dedup_guesses, exit_code=0,
                message="", check=check_dedup_guesses),
    CatalogCase("nfd-and-nfc-name-one-object", make_nfd_then_nfc, exit_code=0, message="",
                check=check_nfd_then_nfc),
    CatalogCase("pipeline-default-collection-after-squat", make_pipeline_after_squat, exit_code=0,
                message="", check=check_pipeline_after_squat, user="bob",
                marks=[pytest.mark.slow]),
]  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(c, marks=c.marks, id=c.id) for c in SUCCESSES])
def test_catalog_successes(tmp_path: Path, case: CatalogCase) -> None:
    if case.id.startswith("pipeline-"):
        small_bids(tmp_path, with_t1w=False)
    result = run_cli(list(case.make(tmp_path)), env=env_of(tmp_path, case.user),
                     timeout=case.timeout)  # fmt: skip
    check_success(result)
    assert case.check is not None
    case.check(tmp_path, result)
