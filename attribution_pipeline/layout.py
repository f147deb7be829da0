"""Where every artifact of a valuation lives under its work directory, and how it is signed.

    <workdir>/
      pipeline_config.json          the configuration the CLI and the UI share
      attribution.duckdb            every table (see storage/results.py)
      dagster_home/                 the Dagster instance (runs, events, partitions)
      data/<contributor>.npy        contributor images at model resolution (uint8 N,C,H,W)
      data/manifest.json            contributor ids, image counts and content hashes
      reference/                    the property instruments (classifier, reference statistics)
      models/full/                  the full model θ*
      models/pruned_base/           the pruned + fine-tuned base θ̃*
      models/untrained/             images of the random-init model (v(∅))
      coalitions/<key>/checkpoint/  the coalition's fine-tuned model (sFT)
      coalitions/<key>/images/      its generated images
      coalitions/<key>/<method>-seed<s>/{checkpoint,images}   the ``ft`` / ``retrain`` utilities
      evaluation/                   LDS and counterfactual summaries

Each artifact folder carries a manifest with an ``inputs_signature``: a hash of the config that
shaped it and the versions of what it was built from. A stage whose artifact already carries the
signature it would produce skips the work, so re-running a valuation recomputes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attribution_pipeline.storage.artifacts import is_complete, read_manifest


def signature(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class RunLayout:
    workdir: Path

    @classmethod
    def at(cls, workdir: str | Path) -> "RunLayout":
        return cls(Path(workdir).resolve())

    @property
    def config_file(self) -> Path:
        return self.workdir / "pipeline_config.json"

    @property
    def database(self) -> Path:
        return self.workdir / "attribution.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.workdir / "dagster_home"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def contributor_array(self, contributor: str) -> Path:
        return self.data_dir / f"{contributor}.npy"

    @property
    def reference_dir(self) -> Path:
        return self.workdir / "reference"

    @property
    def full_model_dir(self) -> Path:
        return self.workdir / "models" / "full"

    @property
    def pruned_base_dir(self) -> Path:
        return self.workdir / "models" / "pruned_base"

    @property
    def untrained_images_dir(self) -> Path:
        return self.workdir / "models" / "untrained" / "images"

    @property
    def full_model_images_dir(self) -> Path:
        return self.workdir / "models" / "full_images"

    def coalition_dir(self, key: str) -> Path:
        return self.workdir / "coalitions" / key

    def coalition_run_dir(self, key: str, method: str = "sft", seed: int | None = None) -> Path:
        """sFT artifacts sit directly in the coalition's folder; ``ft`` and ``retrain`` (and sFT
        with a non-default seed) get a ``<method>-seed<seed>`` sub-folder."""
        if method == "sft" and seed is None:
            return self.coalition_dir(key)
        return self.coalition_dir(key) / f"{method}-seed{seed}"

    def coalition_checkpoint_dir(self, key: str, method: str = "sft", seed: int | None = None) -> Path:
        return self.coalition_run_dir(key, method, seed) / "checkpoint"

    def coalition_images_dir(self, key: str, method: str = "sft", seed: int | None = None) -> Path:
        return self.coalition_run_dir(key, method, seed) / "images"


def current_signature(folder: Path) -> str | None:
    """The inputs signature of a complete artifact, or None when absent or incomplete."""
    if not is_complete(folder):
        return None
    return read_manifest(folder).get("inputs_signature")


def content_hash(folder: Path) -> str:
    return read_manifest(folder)["content_hash"]
