"""Contributor sources (CIFAR-100 archive, labels file, file-name prefix) and the local-input check."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from attribution_pipeline.config import CIFAR20_CLASSES, PipelineConfig, load_preset
from attribution_pipeline.data.contributors import ContributorValidationError
from attribution_pipeline.data.sources import (
    discover_by_prefix,
    discover_cifar100,
    discover_source,
    load_source_images,
    read_labels_file,
)
from attribution_pipeline.inputs import MissingInputError, absolute_paths, check_local_inputs
from attribution_pipeline_tests.tiny_models import colour_images, write_fake_cifar100, write_image_folder

DISTRACTORS = ["apple", "aquarium_fish", "baby"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    # the 20 classes of the preset among other CIFAR-100 classes, in a shuffled label order
    names = DISTRACTORS[:2] + list(CIFAR20_CLASSES[::-1]) + DISTRACTORS[2:]
    return write_fake_cifar100(tmp_path_factory.mktemp("cifar") / "cifar-100-python", names, per_class=3)


def test_cifar100_source_reads_the_twenty_classes_of_the_archive(cifar_root):
    found = discover_cifar100(cifar_root, CIFAR20_CLASSES)
    assert [c.contributor for c in found] == sorted(CIFAR20_CLASSES)
    assert all(c.n_images == 3 for c in found)
    assert len({c.data_hash for c in found}) == 20
    lion = next(c for c in found if c.contributor == "lion")
    arr = load_source_images(lion, 32, 3)
    assert arr.shape == (3, 3, 32, 32) and arr.dtype == np.uint8
    # the pixels are the archive's rows (CHW-flattened), unchanged at 32 px
    with (cifar_root / "train").open("rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    names = DISTRACTORS[:2] + list(CIFAR20_CLASSES[::-1]) + DISTRACTORS[2:]
    rows = raw[b"data"][np.asarray(raw[b"fine_labels"]) == names.index("lion")]
    np.testing.assert_array_equal(arr.reshape(3, -1), rows)
    assert load_source_images(lion, 8, 1).shape == (3, 1, 8, 8)
    assert discover_cifar100(cifar_root, CIFAR20_CLASSES)[0].data_hash == found[0].data_hash  # stable


def test_cifar100_errors_name_the_missing_file_and_unknown_classes(cifar_root, tmp_path):
    with pytest.raises(ContributorValidationError, match=str(tmp_path / "nowhere" / "train")):
        discover_cifar100(tmp_path / "nowhere", CIFAR20_CLASSES)
    with pytest.raises(ContributorValidationError, match="unicorn"):
        discover_cifar100(cifar_root, ("lion", "unicorn"))


def test_cifar100_refuses_a_pickle_that_would_run_code(tmp_path):
    root = tmp_path / "evil"
    write_fake_cifar100(root, ["a", "b"], per_class=1)

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    with (root / "train").open("wb") as fh:
        pickle.dump({b"data": Boom()}, fh, protocol=2)
    with pytest.raises(ContributorValidationError, match="not allowed"):
        discover_cifar100(root, ("a", "b"))


def test_labels_file_groups_images_by_identity(tmp_path):
    images = tmp_path / "images"
    write_image_folder(images, [(f"{i:03d}.png", im) for i, im in enumerate(colour_images(6, 12, (90, 90, 90), 0))])
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,celeb\n000.png,Ada Lovelace\n001.png,Ada Lovelace\n002.png,alan.turing\n"
                      "003.png,alan.turing\n004.png,alan.turing\n")  # 005.png is not listed: skipped
    cfg = PipelineConfig().override({"contributors_dir": str(images), "data": {
        "source": "labels_file", "labels_file": str(labels), "label_column": "celeb"}})
    with pytest.warns(UserWarning, match="not in"):
        found = discover_source(cfg)
    assert [(c.contributor, c.n_images) for c in found] == [("Ada_Lovelace", 2), ("alan.turing", 3)]
    assert read_labels_file(labels, label_column="celeb")["002.png"] == "alan.turing"
    # a JSON mapping works the same; a listed file that is missing is named
    js = tmp_path / "labels.json"
    js.write_text('{"000.png": "x", "001.png": "y", "gone.png": "y"}')
    bad = cfg.override({"data": {"labels_file": str(js)}})
    with pytest.raises(ContributorValidationError, match="gone.png"):
        discover_source(bad)


def test_filename_prefix_makes_artists(tmp_path):
    imgs = colour_images(5, 12, (100, 50, 20), 1)
    names = ["vincent-van-gogh_starry-night.jpg", "vincent-van-gogh_irises.png", "paul-cezanne_apples.png",
             "paul-cezanne_card-players.png", "paul-gauguin_tahiti.png"]
    write_image_folder(tmp_path / "art", zip(names, imgs))
    found = discover_by_prefix(tmp_path / "art")
    assert [(c.contributor, c.n_images) for c in found] == [
        ("paul-cezanne", 2), ("paul-gauguin", 1), ("vincent-van-gogh", 2)]
    write_image_folder(tmp_path / "art", [("untitled.png", imgs[0])])
    with pytest.raises(ContributorValidationError, match="untitled.png"):
        discover_by_prefix(tmp_path / "art")


@pytest.mark.parametrize("preset", ["cifar20", "celebahq-identities", "artbench-post-impressionism"])
def test_a_preset_without_its_downloads_names_every_missing_path(preset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the presets' relative data/paper/... paths point at nothing here
    cfg = PipelineConfig().override(load_preset(preset))
    with pytest.raises(MissingInputError) as info:
        check_local_inputs(cfg)
    text = str(info.value)
    expected = {
        "cifar20": ["cifar-100-python/train", "cifar-100-python/meta", "inception-2015-12-05.pt"],
        "celebahq-identities": ["celebahq/images", "celebahq/labels.csv", "ldm-celebahq-256/vqvae",
                                "blip-vqa-base", "celebahq/reference"],
        "artbench-post-impressionism": ["artbench/post_impressionism", "miniSD-diffusers",
                                        "clip-vit-large-patch14", "sa_0_4_vit_l_14_linear.pth"],
    }[preset]
    for path in expected:
        assert path in text, (path, text)
    assert "expected" in text and "config field" in text


def test_the_default_preset_needs_no_download():
    check_local_inputs(PipelineConfig().override(load_preset("digits")))


def test_absolute_paths_resolve_every_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(PipelineConfig().override(load_preset("artbench-post-impressionism")))
    assert cfg.model.pretrained_path == str(tmp_path / "data/paper/miniSD-diffusers")
    assert cfg.properties.aesthetic_head == str(tmp_path / "data/paper/aesthetic/sa_0_4_vit_l_14_linear.pth")
    assert cfg.contributors_dir == str(tmp_path / "data/paper/artbench/post_impressionism")
