"""Property instruments the contributors did not make: a trusted reference, or a junk-robust fallback."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from attribution_pipeline import cli
from attribution_pipeline.config import DEFAULT_DATA_DIR, PipelineConfig, load_preset
from attribution_pipeline.data.digits import data_set
from attribution_pipeline.data.reference import ReferenceError, load_reference, reference_hash
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.storage.artifacts import read_manifest
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline_tests.conftest import TINY_OVERRIDES, write_digit_contributors

REFERENCE = DEFAULT_DATA_DIR / "reference"
# enough training for the models to learn what they are shown (the tiny model learns almost nothing),
# on the default model: 3 clean contributors of mixed digits and one of pixel noise, every coalition
LEARNS = {"train": {"steps": 300}, "prune": {"finetune_steps": 100}, "finetune": {"steps": 60},
          "sampling": {"n_images": 128, "ddim_steps": 10, "batch_size": 128}, "valuation": {"budget": 14},
          "classifier": {"epochs": 10}}


def _noise_contributor(root, n=24, seed=0):
    folder = root / "noise"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(folder / f"n_{i:03d}.png")


def _quality(cfg) -> dict[str, float]:
    df = ResultStore(RunLayout.at(cfg.workdir).database).query(
        "SELECT contributor, value FROM latest_shapley_values WHERE is_default AND property = 'quality'")
    return dict(zip(df["contributor"], df["value"]))


@pytest.fixture
def clean_and_noise(tmp_path):
    root, d = tmp_path / "c", data_set("default")
    for name in ("clean_a", "clean_b", "clean_c"):
        (root / name).mkdir(parents=True)
        for i, image in enumerate(d[name][:60]):
            Image.fromarray(image, mode="L").save(root / name / f"{i:03d}.png")
    _noise_contributor(root, n=60)
    return root


def test_noise_earns_the_least_quality_with_the_reference_and_with_the_fallback(tmp_path, clean_and_noise):
    """With the trusted reference the instrument learns from the reference alone; without it, the
    fallback keeps the noise out of the yardstick. Either way pure noise gets the lowest credit."""
    cfg = PipelineConfig().override(load_preset("digits")).override(LEARNS).override(
        {"contributors_dir": str(clean_and_noise), "workdir": str(tmp_path / "w")})
    assert cfg.reference.dir == str(REFERENCE)  # the digits preset's trusted reference
    assert run_valuation(cfg, quiet=True) == 0
    layout = RunLayout.at(cfg.workdir)
    manifest = read_manifest(layout.reference_dir)
    assert manifest["trained_on"] == {"reference": reference_hash(REFERENCE, 8, 1)}
    assert manifest["classes"] == [f"digit_{d}" for d in range(10)] and manifest["overlap"] == {}
    quality = with_reference = _quality(cfg)
    assert min(quality, key=quality.get) == "noise" and quality["noise"] < 0 < min(
        v for k, v in quality.items() if k != "noise"), quality

    fallback = cfg.override({"reference": {"dir": None}})  # same models: only the instruments change
    out = io.StringIO()
    assert run_valuation(fallback, out=out) == 0
    assert "no trusted reference" in out.getvalue()
    manifest = read_manifest(layout.reference_dir)
    assert manifest["excluded_from_reference"] == ["noise"] and "contributors" in manifest["trained_on"]
    quality = _quality(fallback)
    assert min(quality, key=quality.get) == "noise", quality
    rounds = ResultStore(layout.database).query("SELECT instrument FROM valuation_rounds ORDER BY computed_at")
    assert rounds["instrument"][0].startswith("trusted reference") and rounds["instrument"][1].startswith("fallback")

    # back to the reference: v(∅) recorded with it is current again (it failed: "v(∅) has no current
    # utility"), no new round, and the table shown is the reference's round, not the latest computed
    again = io.StringIO()
    assert run_valuation(cfg, out=again) == 0, again.getvalue()[-2000:]
    assert _quality(cfg) == with_reference
    assert ResultStore(layout.database).query("SELECT count(*) AS n FROM valuation_rounds")["n"][0] == 2


def test_a_newcomer_under_incremental_rescores_no_unchanged_coalition(tiny_config, tmp_path):
    root = write_digit_contributors(tmp_path / "c", classes=(0, 1, 7), per_class=20)
    cfg = tiny_config.override({"contributors_dir": str(root), "valuation": {"budget": 6},
                                "revaluation": {"policy": "incremental"}})
    assert run_valuation(cfg, quiet=True) == 0
    layout = RunLayout.at(cfg.workdir)
    store = ResultStore(layout.database)
    before = store.query("SELECT coalition_key, property, computed_at FROM utilities WHERE method = 'sft'")
    reference = read_manifest(layout.reference_dir)["content_hash"]
    write_digit_contributors(root, classes=(4,), per_class=20)
    assert run_valuation(cfg, quiet=True) == 0
    assert read_manifest(layout.reference_dir)["content_hash"] == reference  # the instrument stayed
    after = store.query("SELECT coalition_key, property, computed_at FROM utilities WHERE method = 'sft'")
    old = {(r["coalition_key"], r["property"]): r["computed_at"] for r in before.iter_rows(named=True)}
    rescored = [k for r in after.iter_rows(named=True)
                if (k := (r["coalition_key"], r["property"])) in old and r["computed_at"] != old[k]]
    assert rescored == []


def _reference(root, sizes=((8, 8),), mode="L", classes=("a", "b")):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, size in enumerate(sizes * 3):
            Image.new(mode, size, 40 * i).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("case, message", [
    ("missing", "missing; expected a trusted reference folder"),
    ("one_class", "at least 2"),
    ("empty_class", "no PNG/JPEG images"),
    ("unreadable", "not a readable PNG/JPEG"),
    ("size", "not 8x8 L"),
    ("mode", "not 8x8 L"),
])
def test_bad_reference_input_is_refused_before_any_work(tiny_config, tmp_path, capsys, case, message):
    ref = tmp_path / "ref"
    if case == "one_class":
        _reference(ref, classes=("a",))
    elif case == "empty_class":
        _reference(ref)
        (ref / "c").mkdir()
    elif case == "unreadable":
        _reference(ref)
        (ref / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    elif case == "size":
        _reference(ref, sizes=((8, 8), (16, 16)))
    elif case == "mode":
        _reference(ref, mode="RGB")
    args = ["run", "--workdir", str(tmp_path / "w"), "--contributors", str(tiny_config.contributors_dir),
            "--reference", str(ref), "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and str(ref) in err
    assert not (tmp_path / "w").exists()  # nothing written
    if case != "missing":
        with pytest.raises(ReferenceError):
            load_reference(ref, 8, 1)


def test_reference_images_held_by_a_contributor_are_counted_and_warned(tiny_config, tmp_path):
    root = write_digit_contributors(tmp_path / "c", classes=(0, 1, 7), per_class=20)
    ref_image = sorted((REFERENCE / "digit_1").iterdir())[0]
    (root / "digit_1" / "copied_from_reference.png").write_bytes(ref_image.read_bytes())
    cfg = tiny_config.override({"contributors_dir": str(root), "valuation": {"budget": 6}})
    out = io.StringIO()
    assert run_valuation(cfg, out=out) == 0
    assert read_manifest(RunLayout.at(cfg.workdir).reference_dir)["overlap"] == {"digit_1": 1}


@pytest.mark.parametrize("preset", ["digits-classes", "digits-fidelity"])
def test_digits_presets_run_end_to_end_on_a_tiny_config(tmp_path, preset):
    cfg = PipelineConfig().override(load_preset(preset)).override(TINY_OVERRIDES)
    contributors = tmp_path / "c"
    full = data_set("classes" if preset == "digits-classes" else "fidelity")
    keep = sorted(full)[:4]  # a few of the preset's contributors, a few images each: fast
    for name in keep:
        (contributors / name).mkdir(parents=True)
        for i, image in enumerate(full[name][:10]):
            Image.fromarray(image, mode="L").save(contributors / name / f"{i}.png")
    assert cfg.contributors_dir.endswith(preset.replace("digits", "contributors"))
    cfg = cfg.override({"contributors_dir": str(contributors), "workdir": str(tmp_path / "w"),
                        "valuation": {"budget": 6}})
    assert run_valuation(cfg, quiet=True) == 0
    table = _quality(cfg)
    assert sorted(table) == keep


def test_the_ui_run_config_names_a_reference(tiny_config, tmp_path):
    """``resources: {pipeline: {config: {reference: DIR}}}`` reaches the instrument stage."""
    from attribution_pipeline.defs.resources import PipelineResource
    from attribution_pipeline.workdir import write_pipeline_config

    cfg = tiny_config.override({"reference": {"dir": None}})
    write_pipeline_config(cfg)
    resource = PipelineResource(workdir=cfg.workdir, reference=str(REFERENCE))
    assert resource.config().reference.dir == str(REFERENCE)
    assert json.loads(RunLayout.at(cfg.workdir).config_file.read_text())["reference"]["dir"] is None
