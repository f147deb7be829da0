"""Each of the paper's three presets, end to end on tiny local models: the preset file as shipped,
overridden only in size (steps, widths, image counts) and in where its downloads are."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from attribution_pipeline.config import PipelineConfig, load_preset
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.models.latents import latents_dir
from attribution_pipeline.stages import (
    build_property_reference,
    compute_shapley,
    measure_utility,
    measure_empty_coalition,
    measure_full_model,
    plan_coalitions,
    prepare_contributors,
    prune_base_model,
    train_full_model,
)
from attribution_pipeline.storage.artifacts import read_manifest
from attribution_pipeline.storage.index import ingest
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline_tests.tiny_models import (
    PALETTE,
    colour_images,
    write_fake_cifar100,
    write_image_folder,
)

# Sizes only: every other field comes from the preset file.
TINY = {
    "model": {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8,
              "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]},
    "train": {"steps": 20, "batch_size": 8, "warmup_steps": 2},
    "prune": {"finetune_steps": 4, "batch_size": 8},
    "finetune": {"steps": 3, "batch_size": 8},
    "sampling": {"n_images": 8, "ddim_steps": 3, "batch_size": 8},
    "classifier": {"epochs": 2},
    # 3 contributors: all 6 proper coalitions, exact Shapley values; one measurement each (run_stages
    # measures the primary seed only)
    "valuation": {"budget": 6, "replicates": 1},
    "properties": {"batch_size": 16},
}


def run_stages(cfg: PipelineConfig) -> tuple[RunLayout, ResultStore]:
    """The whole valuation through the pure stages, as the Dagster assets call them."""
    layout = RunLayout.at(cfg.workdir)
    store = ResultStore(layout.database)
    prepare_contributors(cfg, layout)
    build_property_reference(cfg, layout)
    train_full_model(cfg, layout)
    prune_base_model(cfg, layout)
    plan = plan_coalitions(cfg, layout)
    ingest(layout.workdir, store)  # the plan's coalitions, indexed as the head does
    measure_empty_coalition(cfg, layout, store)
    for coalition in plan.coalitions:
        measure_utility(cfg, layout, store, coalition)
    measure_full_model(cfg, layout, store)
    compute_shapley(cfg, layout, store)
    return layout, store


def check_valuation(store: ResultStore, prop: str, members: list[str], lo: float, hi: float) -> None:
    util = store.query("SELECT * FROM utilities WHERE method = 'sft' AND property = ?", [prop])
    assert len(util) == 8  # ∅, the full coalition and the 6 others
    values = util["value"].to_numpy()
    assert np.isfinite(values).all() and (values >= lo - 1e-9).all() and (values <= hi + 1e-9).all()
    assert set(util["device"]) == {"cpu"} and set(util["precision"]) == {"fp32"}
    shap = store.query("SELECT * FROM latest_shapley_values WHERE is_default AND property = ?", [prop])
    assert sorted(shap["contributor"]) == sorted(members)
    assert shap["value"].sum() == pytest.approx(shap["v_full"][0] - shap["v_empty"][0], abs=1e-6)  # efficiency


def tiny_preset(name: str, tmp_path: Path, changes: dict) -> PipelineConfig:
    cfg = PipelineConfig().override(load_preset(name)).override(TINY)
    return cfg.override({"workdir": str(tmp_path / "work"), **changes})


def test_cifar20_preset(tmp_path, model_zoo):
    classes = ["lion", "otter", "pear"]
    root = write_fake_cifar100(tmp_path / "cifar-100-python", ["apple", "lion", "otter", "baby", "pear"], per_class=6)
    cfg = tiny_preset("cifar20", tmp_path, {
        "contributors_dir": str(root), "data": {"cifar_classes": classes},
        "model": {"sample_size": 16},
        "classifier": {"inception_weights": str(model_zoo["inception"])},
        "valuation": {"properties": ["inception_score", "kid"]},  # fid: see test_properties_extra
    })
    assert (cfg.model.family, cfg.data.source, cfg.prune.ratio, cfg.model.beta_schedule) == ("ddpm", "cifar100", 0.3, "linear")
    layout, store = run_stages(cfg)
    pruned = read_manifest(layout.pruned_base_dir)
    assert pruned["params_after"] < 0.65 * pruned["params_before"]
    check_valuation(store, "inception_score", classes, 1.0, 8.0)  # the stand-in Inception has 8 classes
    check_valuation(store, "kid", classes, -math.inf, math.inf)


def test_celebahq_identities_preset(tmp_path, model_zoo):
    people = {"ada": PALETTE[0], "bob": PALETTE[1], "cy": PALETTE[2]}
    rows, files = ["filename,celeb"], []
    for k, (who, rgb) in enumerate(people.items()):
        for i, im in enumerate(colour_images(5, 16, rgb, k)):
            files.append((f"{who}_{i}.png", im))
            rows.append(f"{who}_{i}.png,{who.upper()}")
    write_image_folder(tmp_path / "images", files)
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    reference = [(f"r{k}_{i}.png", im) for k, rgb in enumerate(PALETTE) for i, im in enumerate(colour_images(2, 16, rgb, 9 + k))]
    write_image_folder(tmp_path / "reference", reference)
    cfg = tiny_preset("celebahq-identities", tmp_path, {
        "contributors_dir": str(tmp_path / "images"), "data": {"labels_file": str(tmp_path / "labels.csv")},
        "model": {"sample_size": 16, "autoencoder_path": str(model_zoo["vq"])},
        "properties": {"vision_encoder": str(model_zoo["clip"]), "diversity_reference_dir": str(tmp_path / "reference"),
                       "n_clusters": 4},
    })
    assert (cfg.model.family, cfg.model.autoencoder_kind, cfg.prune.ratio) == ("ldm", "vq", 0.5)
    layout, store = run_stages(cfg)
    assert sorted(p.stem for p in latents_dir(layout).glob("*.npy")) == ["ADA", "BOB", "CY"]
    assert (layout.reference_dir / "diversity_clusters.npz").is_file()
    check_valuation(store, "diversity_entropy", ["ADA", "BOB", "CY"], 0.0, 2.0)


def test_artbench_post_impressionism_preset(tmp_path, model_zoo):
    artists = ["paul-cezanne", "paul-gauguin", "vincent-van-gogh"]
    files = [(f"{a}_work-{i}.jpg", im) for k, a in enumerate(artists) for i, im in enumerate(colour_images(4, 16, PALETTE[k], k))]
    write_image_folder(tmp_path / "art", files)
    cfg = tiny_preset("artbench-post-impressionism", tmp_path, {
        "contributors_dir": str(tmp_path / "art"),
        "model": {"sample_size": 16, "pretrained_path": str(model_zoo["sd"]), "lora_rank": 4, "lora_alpha": 4.0,
                  "guidance_scale": 2.0},
        "properties": {"clip_model": str(model_zoo["clip"]), "aesthetic_head": str(model_zoo["aesthetic_head"])},
    })
    assert (cfg.model.family, cfg.data.source, cfg.properties.aesthetic_quantile) == ("sd_lora", "filename_prefix", 0.9)
    layout, store = run_stages(cfg)
    full, pruned = read_manifest(layout.full_model_dir), read_manifest(layout.pruned_base_dir)
    assert full["kind"] == pruned["kind"] == "sd_lora"
    assert pruned["n_parameters"] <= 0.5 * full["n_parameters"] + 2 * 32  # LoRA ranks: keep ~50% of parameters
    # the head scores a unit-normalised 8-d embedding: 5 + w·e with ‖w‖ = 1, so within [4, 6]
    check_valuation(store, "aesthetic", artists, 4.0, 6.0)


def test_a_preset_runs_from_the_command_line_through_dagster(tmp_path, model_zoo, capsys):
    """The README's command for a preset, with its downloads somewhere else and tiny sizes."""
    from attribution_pipeline.cli import main

    artists = ["claude-monet", "georges-seurat"]
    files = [(f"{a}_w{i}.png", im) for k, a in enumerate(artists) for i, im in enumerate(colour_images(4, 16, PALETTE[k], k))]
    write_image_folder(tmp_path / "art", files)
    sets = {"model.pretrained_path": model_zoo["sd"], "model.sample_size": 16, "model.lora_rank": 2,
            "model.guidance_scale": 1.0, "properties.clip_model": model_zoo["clip"],
            "properties.aesthetic_head": model_zoo["aesthetic_head"], "train.steps": 6, "train.batch_size": 4,
            "train.warmup_steps": 1, "prune.finetune_steps": 2, "prune.batch_size": 4, "finetune.steps": 2,
            "finetune.batch_size": 4, "sampling.n_images": 4, "sampling.ddim_steps": 2, "classifier.epochs": 1}
    argv = ["run", "--preset", "artbench-post-impressionism", "--contributors", str(tmp_path / "art"),
            "--workdir", str(tmp_path / "work"), "--budget", "2", "--quiet"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0, capsys.readouterr().err
    store = ResultStore(RunLayout.at(tmp_path / "work").database)
    assert set(store.query("SELECT DISTINCT property FROM utilities")["property"]) == {"aesthetic"}
    shap = store.query("SELECT contributor FROM latest_shapley_values WHERE is_default")
    assert sorted(shap["contributor"]) == artists


def test_a_preset_without_its_downloads_stops_before_writing_anything(tmp_path, monkeypatch, capsys):
    from attribution_pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--preset", "celebahq-identities", "--workdir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "data/paper/ldm-celebahq-256/vqvae" in err and "data/paper/celebahq/labels.csv" in err
    assert not (tmp_path / "work").exists()
