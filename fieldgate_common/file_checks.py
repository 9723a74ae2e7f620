"""What the machine says about a path a configuration names: checks made before anything starts.

Each function returns what is wrong (one phrase naming the path, for a configuration problem)
or None. They look, never create or change anything, so ``check-config`` can run them beside a
running gateway. The process's own permissions decide (``os.access``, and a file meant to be
read is opened), but only where they say something about the gateway's: as root, or on a path
this user owns. ``check-config`` run by an operator on files that belong to the gateway's user
would otherwise fail for the wrong user; ``fieldgate run`` itself, as that user, still finds
what it cannot use when it opens it.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

# A certificate or key file larger than this is not one (a CA bundle is ~200 KiB).
MAX_PEM_BYTES = 4 * 1024 * 1024


def _ours_to_judge(path: Path) -> bool:
    """Whether this process's permissions on ``path`` are the gateway's (root, or its owner)."""
    uid = os.geteuid()
    if uid == 0:
        return True
    try:
        return path.stat().st_uid == uid
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def readable_file(path: Path) -> str | None:
    """The file exists, is a regular file and can be read."""
    if not path.exists():
        parent = path.parent
        if not parent.is_dir():
            return f"{path}: the directory {parent} does not exist"
        return f"{path} does not exist"
    if path.is_dir():
        return f"{path} is a directory, not a file"
    try:
        with path.open("rb"):
            pass
    except PermissionError as exc:
        return f"{path} cannot be read: {exc.strerror}" if _ours_to_judge(path) else None
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    return None


def certificate_file(path: Path) -> str | None:
    """The file holds at least one PEM certificate that TLS can load as a trust anchor."""
    problem = readable_file(path)
    if problem is not None:
        return problem
    if not os.access(path, os.R_OK):
        return None  # another user's file: see the module's note
    if path.stat().st_size > MAX_PEM_BYTES:
        return f"{path} is larger than {MAX_PEM_BYTES} bytes: not a certificate file"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError, OSError):
        return f"{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    return None


def client_certificate(cert: Path, key: Path) -> str | None:
    """The certificate and its private key load together (PEM, the key unencrypted, a pair)."""
    if not (os.access(cert, os.R_OK) and os.access(key, os.R_OK)):
        return None  # another user's files: see the module's note
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        return f"{cert} and {key} are not a certificate and its private key ({reason})"
    except (OSError, ValueError) as exc:
        return f"{cert} and {key} cannot be loaded as a certificate and key ({exc})"
    return None


def writable_directory(path: Path) -> str | None:
    """A directory that exists (or can be created, when ``path`` is missing) and can be written."""
    if path.exists():
        return existing_directory(path)
    ancestor = _nearest_existing(path)
    if not ancestor.is_dir():
        return f"{path} cannot be created: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK) and _ours_to_judge(ancestor):
        return f"{path} does not exist and {ancestor} cannot be written to create it"
    return None


def existing_directory(path: Path) -> str | None:
    """A directory that exists and can be written (to create a file or socket in it)."""
    if not path.exists():
        return f"the directory {path} does not exist"
    if not path.is_dir():
        return f"{path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK) and _ours_to_judge(path):
        return f"the directory {path} cannot be written"
    return None


def writable_file(path: Path) -> str | None:
    """A file that can be appended to: an existing writable file, or a new one in an existing
    writable directory."""
    if path.is_dir():
        return f"{path} is a directory, not a file"
    if path.exists():
        if not os.access(path, os.W_OK) and _ours_to_judge(path):
            return f"{path} cannot be written"
        return None
    return existing_directory(path.parent)
