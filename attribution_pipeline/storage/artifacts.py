"""Artifacts are files (or folders) with manifests, written atomically.

A writer fills a temporary sibling (``.name.tmp-<pid>@<host>.<random>``) and renames it into place
only once the content and its ``manifest.json`` are complete, so a killed process never leaves
something that looks finished. The temporary names carry their writer's process id and host, so
``clean_leftovers`` can remove what a killed writer left, and only that. The manifest's
``content_hash`` is the artifact's data version.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
# ".<name>.tmp-<pid>@<host>.<random>" and ".<name>.old-<pid>@<host>-<attempt>": the writer is named
LEFTOVER = re.compile(r"^\..+\.(?:tmp-(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]+)\.[^/]*"
                      r"|old-(?P<opid>\d+)@(?P<ohost>[A-Za-z0-9_-]+)-\d+)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "localhost"


def temp_prefix(name: str) -> str:
    """The prefix of a temporary sibling of ``name`` written by this process (for ``tempfile``)."""
    return f".{name}.tmp-{os.getpid()}@{_host()}."


class ArtifactMissingError(FileNotFoundError):
    """An artifact folder is absent or incomplete (no manifest)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_folder(folder: Path) -> tuple[str, dict[str, str]]:
    """(combined hash, {relative path: sha256}) of every file under ``folder`` except the manifest."""
    files = {}
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            files[f.relative_to(folder).as_posix()] = sha256_file(f)
    combined = hashlib.sha256("\n".join(f"{k} {v}" for k, v in files.items()).encode()).hexdigest()
    return combined, files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


@contextlib.contextmanager
def atomic_folder(final: Path, metadata: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success write its manifest and rename it to ``final``.

    An existing ``final`` is replaced only after the new content is complete. On an exception the
    temporary folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), dir=final.parent))
    try:
        yield tmp
        content_hash, files = hash_folder(tmp)
        manifest = {
            "content_hash": content_hash,
            "files": files,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(metadata or {}),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        _swap_into_place(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_into_place(tmp: Path, final: Path, attempts: int = 20) -> None:
    """Rename the complete ``tmp`` onto ``final``. Two processes may finish the same artifact at
    once (a coalition launched from the UI and by the sensor): a rename onto a directory that the
    other one just put in place fails, so move it aside and try again; the last writer wins."""
    for attempt in range(attempts):
        old = final.with_name(f".{final.name}.old-{os.getpid()}@{_host()}-{attempt}")
        try:
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            return
        except (FileNotFoundError, OSError) as exc:
            # what we moved aside is stale: the other writer's complete artifact is in place now
            shutil.rmtree(old, ignore_errors=True)
            if isinstance(exc, FileNotFoundError) or exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                if attempt < attempts - 1:
                    time.sleep(0.01 * (attempt + 1))
                    continue
            raise


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a complete artifact folder; ArtifactMissingError names what is missing."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactMissingError(
            f"{folder} is not a complete artifact (no {MANIFEST}); materialize its asset again"
        )
    return json.loads(path.read_text())


def is_complete(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def _writer_alive(pid: int, host: str) -> bool:
    """Whether the writer may still be running: a process on another host cannot be checked, so it
    counts as alive; here, a pid that signal 0 cannot find is gone (a reused pid counts as alive)."""
    if host != _host():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def find_leftovers(workdir: str | Path) -> list[tuple[Path, bool]]:
    """Every temporary or moved-aside artifact under ``workdir`` with a named writer, and whether
    that writer is still alive. Temporaries of the old unnamed form are not listed: their writer
    cannot be told apart from a live one."""
    found = []
    for folder, dirs, files in os.walk(workdir):
        for name in [*dirs, *files]:
            m = LEFTOVER.match(name)
            if m:
                pid, host = int(m["pid"] or m["opid"]), m["host"] or m["ohost"]
                found.append((Path(folder) / name, _writer_alive(pid, host)))
        dirs[:] = [d for d in dirs if not LEFTOVER.match(d)]  # never walk into a temporary folder
    return found


def clean_leftovers(workdir: str | Path) -> list[Path]:
    """Remove the temporaries and moved-aside folders whose writer process is gone; return them.

    A live writer's temporaries (this process's included) are kept. Safe at the start of any run:
    such a folder was never renamed into place, so nothing reads it."""
    removed = []
    for path, alive in find_leftovers(workdir):
        if alive:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if not path.exists():
            removed.append(path)
    return removed
