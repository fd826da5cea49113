"""Access control: a role x action x object matrix, tickets, and not-found-not-forbidden.

Runs on SQLite and PostgreSQL (``cat`` depends on the parametrised ``db_url``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from catalog_helpers import write_files

from neuroscale.catalog.api import Catalog
from neuroscale.catalog.errors import (
    CatalogNotFoundError,
    CatalogPermissionError,
    TicketError,
)

ROLES = [
    "admin", "owner", "writer", "reader", "group_reader", "nobody", "ticket_read", "ticket_write",
]  # fmt: skip
READERS = {"admin", "owner", "writer", "reader", "group_reader", "ticket_read", "ticket_write"}
WRITERS = {"admin", "owner", "writer", "ticket_write"}
OWNERS = {"admin", "owner"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected(action: str, role: str) -> str:
    """The outcome the permission model prescribes: ok, forbidden or notfound."""
    need = {
        "ls": READERS, "stat": READERS, "meta": READERS, "find": READERS, "lineage": READERS,
        "get": READERS, "acl": READERS,
        "meta_add": WRITERS, "meta_rm": WRITERS, "ingest": WRITERS, "rm": WRITERS,
        "mkcoll": WRITERS - {"ticket_write"},  # creating a collection needs a registered user
        "grant": OWNERS, "ticket": OWNERS, "verify": {"admin"}, "cleanup": {"admin"},
        "add_user": {"admin"},
    }[action]  # fmt: skip
    if role in need:
        return "ok"
    if action in {"verify", "cleanup", "add_user"}:
        return "forbidden"  # not about an object: nothing to hide
    return "forbidden" if role in READERS else "notfound"


@pytest.fixture
def world(cat: Catalog, tmp_path: Path) -> dict[str, Any]:
    """/proj (owned by 'owner') with /proj/sub holding objects; grants on /proj are inherited."""
    for name in ["owner", "writer", "reader", "member", "nobody", "extra"]:
        cat.add_user(name)
    cat.add_group("readers")
    cat.set_membership("readers", "member")
    owner = cat.as_user("owner")
    owner.create_collection("/proj")
    owner.grant("/proj", "writer", "write")
    owner.grant("/proj", "reader", "read")
    owner.grant("/proj", "readers", "read")
    files = {"a.txt": b"alpha"}
    for role in ROLES:
        files[f"rm-{role}.txt"] = f"rm {role}".encode()
        files[f"twin-{role}.txt"] = f"rm {role}".encode()
        files[f"new-{role}.txt"] = f"new {role}".encode()
    src = write_files(tmp_path / "src", files)
    owner.ingest([src / n for n in files if not n.startswith("new-")], "/proj/sub")
    deriv = write_files(tmp_path / "d", {"a.deriv": b"derived from alpha"})
    owner.register_derivative(
        deriv / "a.deriv", sources=[sha(b"alpha")], software="t", collection="/proj/sub"
    )
    t_read = owner.create_ticket("/proj", level="read")
    t_write = owner.create_ticket("/proj", level="write")
    users = {
        "admin": cat,
        "owner": owner,
        "writer": cat.as_user("writer"),
        "reader": cat.as_user("reader"),
        "group_reader": cat.as_user("member"),
        "nobody": cat.as_user("nobody"),
        "ticket_read": cat.as_user(None, ticket=t_read),
        "ticket_write": cat.as_user(None, ticket=t_write),
    }
    return {"users": users, "src": src, "tmp": tmp_path}


def actions(world: dict[str, Any], role: str) -> dict[str, Callable[[Catalog], Any]]:
    src, tmp = world["src"], world["tmp"]
    obj = "/proj/sub/a.txt"

    def find(c: Catalog) -> None:
        if obj not in [o.path for o in c.find("has sub or has size or not has zzz")]:
            raise CatalogNotFoundError("not in results")

    return {
        "ls": lambda c: c.ls("/proj/sub"),
        "stat": lambda c: c.stat(obj),
        "meta": lambda c: c.meta(obj),
        "find": find,
        "lineage": lambda c: c.lineage(sha(b"alpha")),
        "get": lambda c: c.get(obj, tmp / f"out-{role}.txt"),
        "acl": lambda c: c.access("/proj/sub"),
        "meta_add": lambda c: c.add_meta(obj, "note", role),
        "meta_rm": lambda c: c.remove_meta(obj, "nothing"),
        "ingest": lambda c: c.ingest(src.parent / "src" / f"new-{role}.txt", "/proj/sub"),
        "rm": lambda c: c.remove(f"/proj/sub/rm-{role}.txt"),
        "mkcoll": lambda c: c.create_collection(f"/proj/sub/c-{role}"),
        "grant": lambda c: c.grant("/proj/sub", "extra", "read"),
        "ticket": lambda c: c.create_ticket("/proj/sub"),
        "verify": lambda c: c.verify(),
        "cleanup": lambda c: c.cleanup(),
        "add_user": lambda c: c.add_user(f"u-{role}"),
    }


def outcome(fn: Callable[[Catalog], Any], c: Catalog) -> str:
    try:
        fn(c)
    except CatalogNotFoundError:
        return "notfound"
    except CatalogPermissionError:
        return "forbidden"
    return "ok"


def test_permission_matrix(world: dict[str, Any]) -> None:
    # create the new-* files the ingest action needs
    for role in ROLES:
        (world["src"] / f"new-{role}.txt").write_bytes(f"new {role}".encode())
    got, want = {}, {}
    for role in ROLES:
        c = world["users"][role]
        for action, fn in actions(world, role).items():
            got[(role, action)] = outcome(fn, c)
            want[(role, action)] = expected(action, role)
    mismatches = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
    assert mismatches == {}
    assert len(got) == len(ROLES) * 17
    # the write actions really happened (or really did not)
    admin = world["users"]["admin"]
    names = {o.name for o in admin.ls("/proj/sub").objects}
    for role in ROLES:
        assert (f"new-{role}.txt" in names) == (role in WRITERS)
        assert (f"rm-{role}.txt" not in names) == (role in WRITERS)


def test_unreadable_looks_like_missing(world: dict[str, Any]) -> None:
    nobody: Catalog = world["users"]["nobody"]
    reader: Catalog = world["users"]["reader"]

    def error(fn: Callable[[], Any]) -> tuple[type, str]:
        with pytest.raises(CatalogNotFoundError) as info:
            fn()
        return type(info.value), str(info.value)

    for existing, missing in [
        ("/proj/sub/a.txt", "/proj/sub/zz.txt"),
        ("/proj/sub", "/proj/zz"),
    ]:
        for op in ("stat", "meta", "remove", "ls"):
            if op == "ls" and existing.endswith(".txt"):
                continue
            e1 = error(lambda op=op, t=existing: getattr(nobody, op)(t))
            e2 = error(lambda op=op, t=missing: getattr(nobody, op)(t))
            assert e1[0] is e2[0]
            assert e1[1].replace(existing, "X") == e2[1].replace(missing, "X")
    assert nobody.collections() == []
    assert nobody.find("has sub") == [] and nobody.find("has size or not has size") == []
    with pytest.raises(CatalogNotFoundError):
        nobody.lineage(sha(b"alpha"))
    # a derivative the reader can see, whose downstream they cannot: hidden, not reported
    admin: Catalog = world["users"]["admin"]
    admin.create_collection("/secret")
    hidden = write_files(world["tmp"] / "h", {"h.bin": b"hidden derivative"})
    admin.register_derivative(
        hidden / "h.bin", sources=[sha(b"alpha")], software="t", collection="/secret"
    )
    outputs = [st.output.objects for st in reader.lineage(sha(b"alpha")).downstream]
    assert outputs == [["/proj/sub/a.deriv"]]
    assert len(admin.lineage(sha(b"alpha")).downstream) == 2
    with pytest.raises(CatalogNotFoundError):
        reader.lineage(sha(b"hidden derivative"))


def test_ticket_expiry_uses_and_revocation(cat: Catalog, tmp_path: Path) -> None:
    cat.add_user("owner")
    cat.add_user("coowner")
    owner = cat.as_user("owner")
    owner.create_collection("/p")
    owner.ingest(write_files(tmp_path, {"f.txt": b"f"}) / "f.txt", "/p")
    # use count: each catalog call with the ticket is one use
    t2 = owner.create_ticket("/p", uses=2)
    anon = cat.as_user(None, ticket=t2)
    anon.ls("/p")
    anon.stat("/p/f.txt")
    with pytest.raises(TicketError, match="no uses left"):
        anon.ls("/p")
    # expiry
    expired = owner.create_ticket("/p", expires=dt.timedelta(seconds=-1))
    with pytest.raises(TicketError, match="expired"):
        cat.as_user(None, ticket=expired).ls("/p")
    with pytest.raises(TicketError, match="unknown"):
        cat.as_user(None, ticket="not-a-ticket").ls("/p")
    # a read ticket does not give write
    t_read = owner.create_ticket("/p", level="read")
    with pytest.raises(CatalogPermissionError):
        cat.as_user(None, ticket=t_read).add_meta("/p/f.txt", "a", "b")
    # explicit revocation by id
    tid = max(t.id for t in owner.tickets())
    owner.revoke_ticket(tid)
    with pytest.raises(TicketError, match="revoked"):
        cat.as_user(None, ticket=t_read).ls("/p")
    # revoking a user's ownership invalidates the tickets they issued, for good
    owner.grant("/p", "coowner", "own")
    t_co = cat.as_user("coowner").create_ticket("/p")
    t_owner = owner.create_ticket("/p")
    cat.as_user(None, ticket=t_co).ls("/p")
    owner.grant("/p", "coowner", "read")
    with pytest.raises(TicketError):
        cat.as_user(None, ticket=t_co).ls("/p")
    owner.grant("/p", "coowner", "own")
    with pytest.raises(TicketError):
        cat.as_user(None, ticket=t_co).ls("/p")
    cat.as_user(None, ticket=t_owner).ls("/p")  # the other owner's ticket still works
    info = {t.id: t for t in owner.tickets()}
    assert sum(t.revoked for t in info.values()) == 2
    # ownership through a group: leaving the group invalidates the member's tickets
    cat.add_group("owners")
    cat.add_user("gm")
    cat.set_membership("owners", "gm")
    owner.grant("/p", "owners", "own")
    t_gm = cat.as_user("gm").create_ticket("/p")
    cat.as_user(None, ticket=t_gm).ls("/p")
    cat.set_membership("owners", "gm", member=False)
    with pytest.raises(TicketError):
        cat.as_user(None, ticket=t_gm).ls("/p")
    # a ticket cannot issue tickets, nor see what it was not given
    with pytest.raises(CatalogPermissionError):
        cat.as_user(None, ticket=t_owner).create_ticket("/p")
    owner.create_collection("/q")
    with pytest.raises(CatalogNotFoundError):
        cat.as_user(None, ticket=t_owner).ls("/q")
