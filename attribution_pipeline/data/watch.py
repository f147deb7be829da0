"""Watching a contributors directory: which folders are settled, valid, rejected or gone.

A folder is validated only once its fingerprint (every file's path, size and modification time,
hidden files included, so an rsync in progress counts) has stayed the same for ``settle_seconds``:
an upload in progress is never registered half-copied. A verdict is kept until the folder changes,
so a rejected folder is reported once, not at every tick. The state is a JSON-able dict (the
sensor's cursor); nothing here imports Dagster.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from attribution_pipeline.data.contributors import contributor_id, validate_folder


def folder_fingerprint(folder: Path) -> str:
    """A cheap hash of a folder's listing: (relative path, size, mtime) of every entry."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        try:
            st = f.stat()
        except FileNotFoundError:  # deleted while we walked: the next tick sees the new listing
            continue
        h.update(f"{f.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class WatchResult:
    accepted: dict[str, str]  # contributor id -> data hash: settled, valid folders
    rejected: dict[str, list[str]]  # folder name -> problems (until the folder changes)
    settling: list[str]  # folders that changed less than settle_seconds ago
    state: dict  # the new state (cursor) to pass to the next call
    events: list[str] = field(default_factory=list)  # what changed at this tick, in words


def watch_contributors(root: Path, previous: dict, now: float, settle_seconds: float) -> WatchResult:
    """One look at ``root``. previous: the ``state`` of the last call ({} the first time)."""
    root = Path(root)
    state: dict[str, dict] = {}
    events: list[str] = []
    settling: list[str] = []
    if not root.is_dir():
        return WatchResult({}, {str(root): [f"{root}: no such directory"]}, [], {}, [f"{root} is missing"])
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        fp = folder_fingerprint(folder)
        entry = dict(previous.get(folder.name) or {})
        if entry.get("fp") != fp:
            entry = {"fp": fp, "since": now, "status": "settling"}
        if entry["status"] == "settling":
            if now - entry["since"] < settle_seconds:
                settling.append(folder.name)
                state[folder.name] = entry
                continue
            found, problems = validate_folder(folder)
            if found is None:
                entry.update(status="rejected", problems=problems)
                events.append(f"rejected {folder.name!r}: " + "; ".join(problems))
            else:
                entry.update(status="accepted", id=found.contributor, hash=found.data_hash, n_images=found.n_images)
                events.append(f"validated {found.contributor!r} ({found.n_images} images, hash {found.data_hash})")
        state[folder.name] = entry
    for gone in sorted(set(previous) - set(state)):
        events.append(f"folder {gone!r} is gone")
    ids = Counter(e["id"] for e in state.values() if e["status"] == "accepted")
    accepted, rejected = {}, {}
    for name, e in state.items():
        if e["status"] == "accepted" and ids[e["id"]] == 1:
            accepted[e["id"]] = e["hash"]
        elif e["status"] == "accepted":
            rejected[name] = [f"{root / name}: another folder has the same contributor id {contributor_id(name)!r} "
                              "once normalised (Unicode NFC); merge or rename them"]
        elif e["status"] == "rejected":
            rejected[name] = e["problems"]
    return WatchResult(dict(sorted(accepted.items())), rejected, settling, state, events)
