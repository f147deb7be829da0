"""The embedded data sets: deterministic, committed as generated, and disjoint from the reference."""

import hashlib

import numpy as np
import pytest

from attribution_pipeline.config import DEFAULT_DATA_DIR
from attribution_pipeline.data.contributors import discover_contributors, load_image
from attribution_pipeline.data.digits import (
    DATA_SETS, EXPECTED_QUALITY_ORDER, FOLDERS, data_set, digits_arrays, reference_split, write_data_set,
)
from attribution_pipeline.data.reference import spatial_correlation


def _pixel_hashes(folder) -> set[str]:
    return {hashlib.sha256(load_image(f, 8, 1).tobytes()).hexdigest()
            for c in discover_contributors(folder) for f in c.files}


@pytest.mark.parametrize("name", DATA_SETS)
def test_each_committed_set_is_exactly_what_the_generator_writes(name):
    committed = {c.contributor: c for c in discover_contributors(DEFAULT_DATA_DIR / FOLDERS[name])}
    generated = data_set(name)
    assert sorted(committed) == sorted(generated)
    for folder, images in generated.items():
        files = committed[folder].files
        assert len(files) == len(images)
        np.testing.assert_array_equal(load_image(files[-1], 8, 1)[0], images[-1])


def test_no_contributor_of_any_set_holds_a_reference_image():
    reference = _pixel_hashes(DEFAULT_DATA_DIR / FOLDERS["reference"])
    assert len(reference) > 400
    for name in ("default", "classes", "fidelity"):
        assert not reference & _pixel_hashes(DEFAULT_DATA_DIR / FOLDERS[name]), name


def test_the_reference_split_keeps_identical_images_together_and_a_share_of_each_class():
    images, labels = digits_arrays()
    ref, pool = reference_split(images, labels)
    assert len(ref) + len(pool) == len(images) and not set(ref) & set(pool)
    digest = [hashlib.sha256(im.tobytes()).hexdigest() for im in images]
    assert not {digest[i] for i in ref} & {digest[i] for i in pool}
    for d in range(10):
        share = np.isin(np.flatnonzero(labels == d), ref).mean()
        assert 0.25 < share < 0.35


def test_the_default_set_has_clean_and_defective_contributors():
    d = data_set("default")
    assert sorted(d) == sorted(EXPECTED_QUALITY_ORDER) and len(d) == 11
    corr = {k: spatial_correlation(v[:, None]) for k, v in d.items()}
    clean = np.median([corr[f"clean_{c}"] for c in "abcdef"])
    assert corr["scrambled"] < 0.1 < clean and corr["noisy"] < clean < corr["blurred"]
    assert len(d["few"]) == 12 and len(d["clean_a"]) == 100
    assert len(data_set("fidelity")) >= 30


def test_writing_is_deterministic_and_refuses_to_overwrite(tmp_path):
    a = discover_contributors(write_data_set("default", tmp_path / "a"))
    b = discover_contributors(write_data_set("default", tmp_path / "b"))
    assert [c.data_hash for c in a] == [c.data_hash for c in b]
    with pytest.raises(FileExistsError):
        write_data_set("default", tmp_path / "a")
