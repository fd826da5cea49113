"""``neuroscale catalog ...``: the command-line interface of the data catalog.

The main CLI hooks it in with :func:`add_subparser` and dispatches to :func:`run`; this module
imports nothing beyond the standard library at import time, so ``neuroscale --help`` works
without the ``[catalog]`` extra.  ``python -m neuroscale.catalog`` runs it stand-alone.

Where the catalog is: ``--url`` if given, else the ``url`` in the configuration file written
by ``catalog init`` (``--config``, ``$NEUROSCALE_CATALOG_CONFIG``, default
``$XDG_CONFIG_HOME/neuroscale/catalog.json``).  The store location is recorded in the
database itself, so every user of a shared (PostgreSQL) catalog uses the same store.

Exit status: 0 on success; 1 when ``verify`` finds a problem; 2 when ``ingest`` could ingest
nothing because every path was skipped (not a regular file: a device, a FIFO...; files that
are skipped beside others that were ingested are listed with the reason and exit 0);
6 when the database itself fails (a read-only or locked SQLite file, a server gone); otherwise
the ``exit_code`` of the error raised (see :mod:`neuroscale.catalog.errors`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

LEVEL_CHOICES = ["null", "read", "write", "own"]


def default_config_path() -> Path:
    """``$NEUROSCALE_CATALOG_CONFIG``, else ``$XDG_CONFIG_HOME/neuroscale/catalog.json``."""
    env = os.environ.get("NEUROSCALE_CATALOG_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "neuroscale" / "catalog.json"


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``catalog`` command (and its sub-commands) to an argparse ``subparsers`` object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()`` of the main CLI.

    Returns
    -------
    argparse.ArgumentParser
        The ``catalog`` parser; parsed arguments carry ``catalog_command``.
    """
    cat = subparsers.add_parser(
        "catalog",
        help="data catalog: ingest, metadata, queries, provenance, fixity, sharing",
        description="A data-management catalog for a lab (after iRODS): content-addressed "
        "store, metadata, provenance, fixity checks and access control.",
    )
    cat.add_argument("--config", type=Path, help="configuration file (default: %(default)s)")
    cat.add_argument("--url", help="catalog database URL (overrides the configuration file)")
    cat.add_argument(
        "--user", help="act as this catalog user (default: $NEUROSCALE_CATALOG_USER or login)"
    )
    cat.add_argument("--ticket", help="use a share ticket")
    sub = cat.add_subparsers(dest="catalog_command", metavar="COMMAND")
    sub.required = True
    for add in (_add_init, _add_ingest, _add_listing, _add_find, _add_meta, _add_lineage,
                _add_verify, _add_share, _add_users, _add_objects, _add_cleanup):  # fmt: skip
        add(sub)
    return cat


def _add_init(sub: Any) -> None:
    p = sub.add_parser("init", help="create or upgrade a catalog and write the configuration")
    p.add_argument("--url", dest="init_url", help="sqlite:///PATH (default) or postgresql://...")
    p.add_argument("--store", help="store directory or fsspec URL (s3://bucket/prefix)")
    p.add_argument("--admin", help="first administrator (default: the current user)")
    p.add_argument(
        "--store-option", action="append", default=[], metavar="KEY=VALUE",
        help="fsspec store option, e.g. endpoint_url=http://... (no secrets: use the environment)",
    )  # fmt: skip
    _json_flag(p)


def _add_ingest(sub: Any) -> None:
    p = sub.add_parser("ingest", help="copy files into the store and catalog them")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE[:UNIT]")
    p.add_argument("--name", help="object name (single file only)")
    p.add_argument("--no-extract", action="store_true", help="no automatic metadata")
    _json_flag(p)


def _add_listing(sub: Any) -> None:
    """``ls`` and ``mkcoll``."""
    p = sub.add_parser("ls", help="list collections, or a collection's contents")
    p.add_argument("collection", nargs="?")
    p.add_argument("-l", "--long", action="store_true", help="show sizes and checksums")
    _json_flag(p)

    p = sub.add_parser("mkcoll", help="create a collection")
    p.add_argument("collection")
    _json_flag(p)


def _add_find(sub: Any) -> None:
    p = sub.add_parser("find", help="query objects by metadata")
    p.add_argument("--where", "-w", required=True, help="e.g. \"task = 'oneback' and tr < 2.5\"")
    p.add_argument("--collection", "-c")
    p.add_argument("--limit", type=int)
    _json_flag(p)


def _add_meta(sub: Any) -> None:
    p = sub.add_parser("meta", help="show, add or remove metadata")
    msub = p.add_subparsers(dest="meta_command", metavar="ACTION")
    msub.required = True
    m = msub.add_parser("show", help="show the metadata of an object or collection")
    m.add_argument("target")
    _json_flag(m)
    m = msub.add_parser("add", help="add KEY=VALUE[:UNIT] triples")
    m.add_argument("target")
    m.add_argument("triples", nargs="+", metavar="KEY=VALUE[:UNIT]")
    _json_flag(m)
    m = msub.add_parser("rm", help="remove an attribute (or one of its values)")
    m.add_argument("target")
    m.add_argument("attribute")
    m.add_argument("--value")
    _json_flag(m)


def _add_lineage(sub: Any) -> None:
    p = sub.add_parser("lineage", help="provenance: back to raw data and forward to derivatives")
    p.add_argument("target", help="object path, SHA-256, or a local file")
    p.add_argument("--max-depth", type=int, default=100)
    _json_flag(p)


def _add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="fixity check: re-hash stored objects")
    p.add_argument("--incremental", action="store_true", help="only never/long-unchecked objects")
    p.add_argument("--older-than", type=float, default=30.0, metavar="DAYS")
    p.add_argument("--restart", action="store_true", help="do not resume an interrupted run")
    p.add_argument("--max-objects", type=int, help="stop after N objects (resumable)")
    p.add_argument("--grace", type=float, default=3600.0, metavar="SECONDS")
    _json_flag(p)


def _add_share(sub: Any) -> None:
    p = sub.add_parser("share", help="grant permissions, issue or revoke tickets")
    p.add_argument("collection", nargs="?")
    p.add_argument("--with", dest="principal", metavar="USER_OR_GROUP")
    p.add_argument("--level", choices=LEVEL_CHOICES)
    p.add_argument("--ticket", dest="make_ticket", action="store_true", help="issue a ticket")
    p.add_argument("--expires", help="ticket lifetime (30m, 12h, 7d) or ISO date-time")
    p.add_argument("--uses", type=int, help="ticket use count")
    p.add_argument("--list", action="store_true", help="show permissions and tickets")
    p.add_argument("--revoke-ticket", type=int, metavar="ID")
    _json_flag(p)


def _add_users(sub: Any) -> None:
    p = sub.add_parser("users", help="list or manage users and groups")
    usub = p.add_subparsers(dest="users_command", metavar="ACTION")
    usub.required = True
    u = usub.add_parser("list", help="users and groups")
    _json_flag(u)
    u = usub.add_parser("add", help="register a user (admins)")
    u.add_argument("name")
    u.add_argument("--admin", action="store_true")
    _json_flag(u)
    u = usub.add_parser("group", help="create a group / change its members (admins)")
    u.add_argument("name")
    u.add_argument("--add", nargs="+", default=[], metavar="USER")
    u.add_argument("--remove", nargs="+", default=[], metavar="USER")
    _json_flag(u)
    u = usub.add_parser("rm", help="remove a user or group (admins)")
    u.add_argument("name")
    _json_flag(u)


def _add_objects(sub: Any) -> None:
    """``rm`` and ``get``."""
    p = sub.add_parser("rm", help="remove an object")
    p.add_argument("target")
    p.add_argument("--force", action="store_true", help="also delete the last stored copy")
    _json_flag(p)

    p = sub.add_parser("get", help="copy an object out of the store (checksum verified)")
    p.add_argument("target")
    p.add_argument("dest", type=Path)
    _json_flag(p)


def _add_cleanup(sub: Any) -> None:
    p = sub.add_parser("cleanup", help="remove leftovers of crashed ingests (admins)")
    p.add_argument("--grace", type=float, default=3600.0, metavar="SECONDS")
    p.add_argument("--untracked", action="store_true", help="also delete unrecorded stored files")
    _json_flag(p)


# ---------------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _emit(args: argparse.Namespace, data: Any, text: str, out: TextIO) -> None:
    if getattr(args, "json", False):
        json.dump(_plain(data), out, indent=2, sort_keys=True)
        out.write("\n")
    elif text:
        out.write(text if text.endswith("\n") else text + "\n")


def parse_expiry(text: str) -> dt.datetime | dt.timedelta:
    """``30m``, ``12h``, ``7d``, ``90s`` -> timedelta; otherwise an ISO date-time (UTC if naive)."""
    from neuroscale.catalog.errors import MetadataError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        n = float(m.group(1))
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
        return dt.timedelta(**{unit[m.group(2)]: n})
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise MetadataError(f"--expires {text!r}: use 30m, 12h, 7d or an ISO date-time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _catalog_url(args: argparse.Namespace) -> str:
    from neuroscale.catalog.errors import CatalogConfigError

    if args.url:
        return str(args.url)
    path = args.config or default_config_path()
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogConfigError(
            "no catalog configured: run 'neuroscale catalog init' (or pass --url)", path
        ) from None
    except ValueError as exc:
        raise CatalogConfigError(f"invalid configuration file ({exc})", path) from exc
    if not isinstance(config, dict) or not isinstance(config.get("url"), str):
        raise CatalogConfigError("configuration file has no 'url'", path)
    return str(config["url"])


def _write_config(path: Path, url: str) -> None:
    from neuroscale.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"url": url}, indent=2) + "\n")
    os.chmod(path, 0o600)


def _fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Execute a parsed ``catalog`` command; returns the exit status.

    Errors deriving from :class:`neuroscale.errors.NeuroscaleError` are printed as one line
    on stderr and turned into their ``exit_code``.
    """
    from neuroscale.errors import NeuroscaleError

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        from sqlalchemy.exc import DBAPIError
    except ImportError:  # the catalog's own import says which extra is missing
        DBAPIError = NeuroscaleError  # type: ignore[misc,assignment]
    try:
        return _run(args, out)
    except NeuroscaleError as exc:
        err.write(f"neuroscale catalog: error: {exc}\n")
        return int(getattr(exc, "exit_code", 1))
    except DBAPIError as exc:  # e.g. a read-only or locked SQLite file, a server gone
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        err.write(f"neuroscale catalog: error: the catalog database failed: {reason}\n")
        return 6


def _run(args: argparse.Namespace, out: TextIO) -> int:
    from neuroscale.catalog.api import Catalog

    command = args.catalog_command
    if command == "init":
        return _init(Catalog, args, out)
    with Catalog(_catalog_url(args), user=args.user, ticket=args.ticket) as cat:
        handler = _COMMANDS.get(command)
        if handler is not None:
            return handler(cat, args, out)
    raise AssertionError(f"unknown catalog command {command!r}")


def _init(catalog_cls: Any, args: argparse.Namespace, out: TextIO) -> int:
    config = args.config or default_config_path()
    url = args.init_url or args.url or f"sqlite:///{config.parent.resolve() / 'catalog.sqlite'}"
    options: dict[str, Any] = {}
    for item in args.store_option:
        key, _, value = item.partition("=")
        options[key] = value
    cat = catalog_cls.init(url, args.store, admin=args.admin or args.user, store_options=options)
    try:
        _write_config(config, url)
        data = {"url": url, "store": cat.store.url, "config": str(config), "admin": cat.user}
        _emit(args, data, f"catalog {url}\nstore   {cat.store.url}\nconfig  {config}", out)
    finally:
        cat.close()
    return 0


def _ingest(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    from neuroscale.catalog.metadata import parse_meta_option

    meta = [parse_meta_option(m) for m in args.meta]
    report = cat.ingest(
        args.paths, args.collection, meta=meta, extract=not args.no_extract, name=args.name
    )
    lines = [f"{r.status:12s} {r.object.path}" for r in report.results]
    lines += [f"skipped      {p}: {why}" for p, why in report.skipped]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(report.counts.items()))
    lines.append(f"{len(report.results)} file(s): {counts or 'nothing'}")
    _emit(args, report, "\n".join(lines), out)
    if not report.results and report.skipped:
        from neuroscale.errors import InputNotFoundError

        path, why = report.skipped[0]
        n_more = len(report.skipped) - 1
        more = f" (and {n_more} more skipped)" if n_more else ""
        raise InputNotFoundError(f"skipped, {why}; nothing ingested{more}", path)
    return 0


def _ls(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    if args.collection is None:
        cols = cat.collections()
        _emit(args, cols, "\n".join(cols), out)
        return 0
    listing = cat.ls(args.collection)
    lines = [f"{c}/" for c in listing.subcollections]
    for o in listing.objects:
        lines.append(f"{o.sha256[:12]}  {_fmt_size(o.size):>10}  {o.name}" if args.long else o.name)
    _emit(args, listing, "\n".join(lines), out)
    return 0


def _mkcoll(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    path = cat.create_collection(args.collection)
    _emit(args, {"collection": path}, path, out)
    return 0


def _find(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    found = cat.find(args.where, collection=args.collection, limit=args.limit)
    _emit(args, found, "\n".join(o.path for o in found), out)
    return 0


def _meta(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    from neuroscale.catalog.metadata import parse_meta_option

    if args.meta_command == "show":
        rows = cat.meta(args.target)
        text = "\n".join(
            f"{m.attribute} = {m.value}" + (f" [{m.unit}]" if m.unit else "") for m in rows
        )
        _emit(args, rows, text, out)
    elif args.meta_command == "add":
        triples = [parse_meta_option(t) for t in args.triples]
        for t in triples:
            cat.add_meta(args.target, t)
        _emit(args, triples, f"added {len(triples)} triple(s) to {args.target}", out)
    else:
        n = cat.remove_meta(args.target, args.attribute, args.value)
        _emit(args, {"removed": n}, f"removed {n} triple(s)", out)
    return 0


def _lineage(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    lin = cat.lineage(args.target, max_depth=args.max_depth)
    _emit(args, lin, _lineage_text(lin), out)
    return 0


def _verify(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    rep = cat.verify(
        incremental=args.incremental,
        older_than=dt.timedelta(days=args.older_than),
        restart=args.restart,
        max_objects=args.max_objects,
        grace=args.grace,
    )
    lines = [
        f"fixity run {rep.run_id} ({rep.mode}{', resumed' if rep.resumed else ''}"
        f"{', interrupted' if not rep.complete else ''}): {rep.checked} checked, "
        f"{rep.n_ok} ok, {len(rep.corrupt)} corrupted, {len(rep.missing)} missing, "
        f"{len(rep.untracked)} untracked, {len(rep.stale_temp)} stale temporary"
    ]
    for p in rep.corrupt + rep.missing:
        names = ", ".join(p.objects) or "(no object)"
        lines.append(f"{p.status.upper():8s} {p.sha256}  {names}")
    lines += [f"UNTRACKED {k}" for k in rep.untracked]
    lines += [f"STALE    {k}  (run 'neuroscale catalog cleanup')" for k in rep.stale_temp]
    _emit(args, dataclasses.asdict(rep) | {"ok": rep.ok}, "\n".join(lines), out)
    return 0 if rep.ok else 1


def _rm(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    info = cat.remove(args.target, force=args.force)
    _emit(args, info, f"removed {info.path}", out)
    return 0


def _get(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    dest = cat.get(args.target, args.dest)
    _emit(args, {"path": str(dest)}, str(dest), out)
    return 0


def _cleanup(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    rep = cat.cleanup(grace=args.grace, untracked=args.untracked)
    text = (
        f"removed {len(rep.pending)} unfinished object(s), {len(rep.deleting)} "
        f"half-removed, {len(rep.temp)} temporary file(s), "
        f"{len(rep.untracked)} untracked file(s)"
    )
    _emit(args, rep, text, out)
    return 0


def _lineage_text(lin: Any) -> str:
    def names(src: Any) -> str:
        return ", ".join(src.objects) if src.objects else "(not accessible)"

    def when(step: Any) -> str:
        if step.started and step.ended:
            return f" {step.started.isoformat()} .. {step.ended.isoformat()}"
        return ""

    lines = [f"{names(lin.target)}  sha256:{lin.target.sha256}"]
    if lin.upstream:
        lines.append("derived from (upstream):")
    for st in lin.upstream:
        pad = "  " * st.depth
        lines.append(f"{pad}<- {st.software}{when(st)} params={json.dumps(st.parameters)}")
        lines.append(f"{pad}   output {names(st.output)}  sha256:{st.output.sha256[:12]}")
        for src in st.sources:
            lines.append(f"{pad}   source {names(src)}  sha256:{src.sha256[:12]}")
    if lin.raw:
        lines.append("raw data:")
        lines += [f"  {names(r)}  sha256:{r.sha256}" for r in lin.raw]
    if lin.downstream:
        lines.append("used by (downstream):")
    for st in lin.downstream:
        pad = "  " * st.depth
        lines.append(
            f"{pad}-> {names(st.output)}  sha256:{st.output.sha256[:12]}  by {st.software}"
        )
    return "\n".join(lines)


def _share(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    from neuroscale.catalog.errors import ConfigurationError

    if args.revoke_ticket is not None:
        cat.revoke_ticket(args.revoke_ticket)
        _emit(args, {"revoked": args.revoke_ticket}, f"revoked ticket {args.revoke_ticket}", out)
        return 0
    if args.collection is None:
        raise ConfigurationError("share needs a COLLECTION (or --revoke-ticket ID)")
    if args.make_ticket:
        token = cat.create_ticket(
            args.collection,
            level=args.level or "read",
            expires=parse_expiry(args.expires) if args.expires else None,
            uses=args.uses,
        )
        _emit(args, {"ticket": token, "collection": args.collection}, token, out)
        return 0
    if args.principal:
        if not args.level:
            raise ConfigurationError("--with needs --level null|read|write|own")
        cat.grant(args.collection, args.principal, args.level)
        _emit(
            args,
            {"collection": args.collection, "principal": args.principal, "level": args.level},
            f"{args.principal}: {args.level} on {args.collection}",
            out,
        )
        return 0
    acl = cat.access(args.collection)
    tickets = [t for t in cat.tickets() if t.collection == cat.ls(args.collection).collection]
    lines = [f"{a.level:5s} {a.kind:5s} {a.principal}  (on {a.collection})" for a in acl]
    for t in tickets:
        state = "revoked" if t.revoked else "active"
        lines.append(
            f"ticket {t.id}: {t.level} by {t.issuer}, {state}, used {t.uses_count}"
            f"/{t.uses_limit if t.uses_limit is not None else '-'}, expires "
            f"{t.expires.isoformat() if t.expires else 'never'}"
        )
    _emit(args, {"access": acl, "tickets": tickets}, "\n".join(lines), out)
    return 0


def _users(cat: Any, args: argparse.Namespace, out: TextIO) -> int:
    action = args.users_command
    if action == "list":
        people = cat.principals()
        lines = [
            f"{p.kind:5s} {p.name}{' (admin)' if p.is_admin else ''}"
            + (f"  [{', '.join(p.related)}]" if p.related else "")
            for p in people
        ]
        _emit(args, people, "\n".join(lines), out)
    elif action == "add":
        cat.add_user(args.name, admin=args.admin)
        _emit(args, {"user": args.name}, f"added user {args.name}", out)
    elif action == "group":
        if args.name not in {p.name for p in cat.principals() if p.kind == "group"}:
            cat.add_group(args.name)
        for user in args.add:
            cat.set_membership(args.name, user, True)
        for user in args.remove:
            cat.set_membership(args.name, user, False)
        _emit(args, {"group": args.name}, f"group {args.name} updated", out)
    else:
        cat.remove_principal(args.name)
        _emit(args, {"removed": args.name}, f"removed {args.name}", out)
    return 0


#: The handler of each sub-command but ``init``: ``handler(catalog, args, out) -> exit status``.
_COMMANDS: dict[str, Callable[[Any, argparse.Namespace, TextIO], int]] = {
    "ingest": _ingest,
    "ls": _ls,
    "mkcoll": _mkcoll,
    "find": _find,
    "meta": _meta,
    "lineage": _lineage,
    "verify": _verify,
    "share": _share,
    "users": _users,
    "rm": _rm,
    "get": _get,
    "cleanup": _cleanup,
}


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m neuroscale.catalog ARGS`` == ``neuroscale catalog ARGS``."""
    parser = argparse.ArgumentParser(prog="neuroscale")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subparser(subparsers)
    args = parser.parse_args(["catalog", *(sys.argv[1:] if argv is None else argv)])
    return run(args)
