"""Validation of logical names and store keys: nothing may escape the store or a collection.

A logical object name is a relative, '/'-separated path inside its collection
(``sub-01/func/sub-01_task-rest_bold.nii.gz``); a collection path is absolute (``/lab/study``).
Both are rejected when a component is empty, ``.`` or ``..``, or when they contain a NUL byte,
a backslash or another control character.  Store keys are built only from validated SHA-256
hex digests, never from user-supplied names.

Names and paths are returned in Unicode normalisation form NFC (:func:`nfc`), so ``café``
typed with a combining accent (NFD, as macOS file names are) and with a precomposed ``é`` name
the same object.
"""

from __future__ import annotations

import re
import unicodedata

from neuroscale.catalog.errors import UnsafePathError

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
MAX_COMPONENT = 255
MAX_PATH = 1024


#: The parent of the per-user home collections (``/home/<user>``, as iRODS's ``/zone/home``).
HOME = "/home"


def nfc(text: str) -> str:
    """``text`` in Unicode normalisation form NFC (composed characters)."""
    return unicodedata.normalize("NFC", text) if isinstance(text, str) else text


def is_sha256(text: str) -> bool:
    """True when ``text`` is a lower-case 64-digit hexadecimal SHA-256 digest."""
    return bool(_SHA_RE.match(text))


def check_sha256(text: str) -> str:
    """Return ``text`` when it is a SHA-256 hex digest, else raise :class:`UnsafePathError`."""
    if not isinstance(text, str) or not is_sha256(text):
        raise UnsafePathError(f"not a SHA-256 hex digest: {text!r}")
    return text


def _components(text: str, what: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise UnsafePathError(f"empty {what}")
    if len(text) > MAX_PATH:
        raise UnsafePathError(f"{what} longer than {MAX_PATH} characters")
    if _BAD_CHARS.search(text):
        raise UnsafePathError(
            f"{what} {text!r} contains a NUL byte, backslash or control character"
        )
    parts = text.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"{what} {text!r} has an empty, '.' or '..' component")
        if len(part) > MAX_COMPONENT:
            raise UnsafePathError(
                f"{what} {text!r} has a component over {MAX_COMPONENT} characters"
            )
    return parts


def check_object_name(name: str) -> str:
    """Validate a relative object name inside a collection and return it.

    Raises
    ------
    UnsafePathError
        Absolute name, ``..``/``.``/empty component, NUL byte, backslash or control character.
    """
    name = nfc(name)
    if isinstance(name, str) and name.startswith("/"):
        raise UnsafePathError(f"object name {name!r} must be relative to its collection")
    _components(name, "object name")
    return name


def normalise_collection(path: str) -> str:
    """Return the canonical form ``/a/b`` of a collection path (a leading '/' is added).

    Raises
    ------
    UnsafePathError
        ``..``/``.``/empty component, NUL byte, backslash or control character.
    """
    if not isinstance(path, str) or not path.strip("/"):
        raise UnsafePathError(f"invalid collection path {path!r}")
    path = nfc(path)
    body = path[1:] if path.startswith("/") else path
    if body.endswith("/"):
        body = body[:-1]
    _components(body, "collection path")
    return "/" + body


def home_collection(user: str) -> str:
    """The home collection ``/home/<user>`` of a catalog user.

    Raises
    ------
    UnsafePathError
        The user name cannot be one path component (contains '/', is '.' or '..', a control
        character...).
    """
    name = nfc(user)
    if not isinstance(name, str) or "/" in name:
        raise UnsafePathError(f"user name {user!r} cannot name a home collection")
    _components(name, "user name")
    return f"{HOME}/{name}"


def parent_collection(path: str) -> str | None:
    """The parent of a canonical collection path (None for a top-level collection)."""
    head = path.rsplit("/", 1)[0]
    return head or None


def object_key(sha256: str) -> str:
    """Store key of the content ``sha256``: ``objects/ab/<sha256>``.

    One level of 256 directories, as git's loose objects: a million objects are ~4,000 per
    directory (ext4 and xfs index large directories), and ingesting many small files does not
    create a directory per object as a two-level ``ab/cd`` fan-out would.
    """
    check_sha256(sha256)
    return f"objects/{sha256[:2]}/{sha256}"


def legacy_object_key(sha256: str) -> str:
    """Key of ``sha256`` in the two-level layout of stores made before 0.1.0's release
    (``objects/ab/cd/<sha256>``), moved to :func:`object_key` when such a store is opened."""
    check_sha256(sha256)
    return f"objects/{sha256[:2]}/{sha256[2:4]}/{sha256}"
