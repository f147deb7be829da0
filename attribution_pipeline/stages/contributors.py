"""Contributors: validate the source, cache each contributor's images, register them in DuckDB.

A *snapshot* ``{contributor: data_hash}`` is what one round values. The CLI, the schedule and the
contributors sensor take it before any work (``take_snapshot``); ``prepare_contributors`` then
values exactly those contributors, each still hashing the same, so a folder that appears or
changes while a run reads the directory joins the next round, never this one half-copied.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import (
    MIN_CONTRIBUTORS,
    ContributorValidationError,
    duplicate_images,
    scan_contributors,
    shared_image_hashes,
)
from attribution_pipeline.data.reference import scan_reference
from attribution_pipeline.data.sources import discover_source, load_source_images
from attribution_pipeline.inputs import check_local_inputs
from attribution_pipeline.layout import RunLayout, signature
from attribution_pipeline.models.registry import get_backend
from attribution_pipeline.stages.result import Log, quiet
from attribution_pipeline.storage.artifacts import atomic_write_bytes, atomic_write_json
from attribution_pipeline.storage.index import contributor_rows, register_contributor_rows


@dataclass
class Snapshot:
    """The contributors a round values (``accepted``: {id: data_hash}) and the folders left out
    with their problems (``rejected``: {folder name: [problem, ...]}, lenient scans only)."""

    accepted: dict[str, str]
    rejected: dict[str, list[str]] = field(default_factory=dict)


def too_few(n: int, where) -> str | None:
    """The one rule on the number of contributors: why ``n`` cannot be valued, or None."""
    if n < MIN_CONTRIBUTORS:
        return f"{where}: {n} valid contributor(s); a valuation needs at least {MIN_CONTRIBUTORS}"
    return None


def take_snapshot(cfg: PipelineConfig, lenient: bool = False) -> Snapshot:
    """Validate the configured source now. Strict (default): any bad folder raises
    ContributorValidationError naming every problem. Lenient (folder sources): bad folders are
    left out and listed in ``rejected``; only too few valid contributors raises."""
    check_local_inputs(cfg)
    if lenient and cfg.data.source == "folders":
        scan = scan_contributors(cfg.contributors_path)
        found, rejected = scan.accepted, scan.rejected
    else:
        found, rejected = discover_source(cfg), {}
    problem = too_few(len(found), cfg.contributors_path)
    if problem:
        raise ContributorValidationError(cfg.contributors_path, [problem])
    return Snapshot({c.contributor: c.data_hash for c in found}, rejected)


def _validated(cfg: PipelineConfig, snapshot: dict[str, str] | None):
    """The contributors to value: all of the source, or exactly ``snapshot`` (unchanged)."""
    if snapshot is None:
        return discover_source(cfg)
    if cfg.data.source == "folders":  # validate only the snapshot's folders: others may be mid-upload
        scan = scan_contributors(cfg.contributors_path, only=snapshot)
        found, problems = scan.accepted, [p for ps in scan.rejected.values() for p in ps]
    else:
        found = [c for c in discover_source(cfg) if c.contributor in snapshot]
        gone = sorted(set(snapshot) - {c.contributor for c in found})
        problems = [f"{cfg.contributors_path}: contributor {g!r} is gone since it was validated" for g in gone]
    problems += [f"{c.path}: contributor {c.contributor!r} changed since it was validated (data hash "
                 f"{snapshot[c.contributor]} -> {c.data_hash}); the next round values its new content"
                 for c in found if c.data_hash != snapshot[c.contributor]]
    if not problems and too_few(len(found), cfg.contributors_path):
        problems.append(too_few(len(found), cfg.contributors_path))
    if problems:
        raise ContributorValidationError(cfg.contributors_path, problems)
    return found


def _entry(c, res: tuple[int, int], duplicates: dict, shared: set) -> dict:
    return {
        "contributor": c.contributor,
        "n_images": c.n_images,
        "data_hash": c.data_hash,
        "n_skipped_files": len(c.skipped),
        "path": str(c.path),
        "resolution": list(res),
        "duplicates_with": duplicates.get(c.contributor, {}),
        "n_duplicate_images": sum(h in shared for h in getattr(c, "file_hashes", ())),
    }


def _cache_images(cfg: PipelineConfig, layout: RunLayout, c, entry: dict, old: dict, log: Log) -> None:
    """Write ``data/<contributor>.npy`` unless the cached array has this data hash and resolution."""
    prev = old.get(c.contributor)
    path = layout.contributor_array(c.contributor)
    if prev and prev["data_hash"] == c.data_hash and prev.get("resolution") == entry["resolution"] \
            and path.is_file():
        return
    buffer = io.BytesIO()
    np.save(buffer, load_source_images(c, cfg.model.sample_size, cfg.model.channels))
    atomic_write_bytes(path, buffer.getvalue())
    log(f"cached {c.n_images} images of contributor {c.contributor}")


def prepare_contributors(cfg: PipelineConfig, layout: RunLayout, log: Log = quiet,
                         snapshot: dict[str, str] | None = None) -> dict:
    """Validate the contributors and cache each one's images at model resolution.

    Returns the data manifest ``{"contributors": [{contributor, n_images, data_hash, ...}], ...}``.
    Raises MissingInputError (a configured local file or folder is missing) or
    ContributorValidationError before anything is written when the data is bad. Latent model
    families also cache each contributor's latents here (``models/latents.py``); their hash joins
    the manifest's ``content_hash``. snapshot: see the module docstring (None = the whole source).
    """
    check_local_inputs(cfg)
    if cfg.reference.dir:  # a UI launch with a bad reference fails here, before any image is cached
        scan_reference(cfg.reference.dir, cfg.model.sample_size, cfg.model.channels)
    found = _validated(cfg, snapshot)
    duplicates, shared = duplicate_images(found), shared_image_hashes(found)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = layout.data_dir / "manifest.json"
    old = {}
    if manifest_path.is_file():
        old = {c["contributor"]: c for c in json.loads(manifest_path.read_text())["contributors"]}
    res = (cfg.model.sample_size, cfg.model.channels)
    entries = []
    for c in found:
        entry = _entry(c, res, duplicates, shared)
        if entry["duplicates_with"]:
            log(f"contributor {c.contributor} shares byte-identical images with {entry['duplicates_with']} "
                "(kept in each; flagged in the contributors table)")
        _cache_images(cfg, layout, c, entry, old, log)
        entries.append(entry)
    latents = get_backend(cfg).prepare_data(layout, entries, log)
    parts = [[(e["contributor"], e["data_hash"]) for e in entries], list(res)] + ([latents] if latents else [])
    manifest = {"contributors": entries, "content_hash": signature(*parts)}
    atomic_write_json(manifest_path, manifest)
    return manifest


def read_contributors(layout: RunLayout) -> dict:
    """The data manifest written by ``prepare_contributors``."""
    path = layout.data_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: materialize the `contributors` asset first")
    return json.loads(path.read_text())


def contributor_ids(layout: RunLayout) -> list[str]:
    return [c["contributor"] for c in read_contributors(layout)["contributors"]]


def data_versions(manifest: dict) -> dict[str, str]:
    """{contributor: data_hash} of a data manifest."""
    return {c["contributor"]: c["data_hash"] for c in manifest["contributors"]}


def register_contributors(store, manifest: dict) -> list[dict]:
    """Upsert the ``contributors`` rows of a data manifest; stamp ``removed_at`` on contributors
    that are no longer in it. Head process only (workers leave the manifest to ``ingest``)."""
    rows = contributor_rows(manifest)
    register_contributor_rows(store, rows)
    return rows
