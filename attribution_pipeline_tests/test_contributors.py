import numpy as np
import pytest
from PIL import Image

from attribution_pipeline.config import DEFAULT_DATA_DIR
from attribution_pipeline.data.contributors import (
    ContributorValidationError, discover_contributors, load_image,
)
from attribution_pipeline.data.digits import digits_arrays, write_default_contributors


def test_embedded_default_matches_sklearn_digits():
    """The committed data/contributors is exactly scikit-learn's digits, one folder per class."""
    found = discover_contributors(DEFAULT_DATA_DIR / "contributors")
    assert [c.contributor for c in found] == [f"digit_{d}" for d in range(10)]
    images, labels = digits_arrays()
    assert sum(c.n_images for c in found) == len(images) == 1797
    c3 = found[3]
    assert c3.n_images == int((labels == 3).sum())
    first = int(np.flatnonzero(labels == 3)[0])
    np.testing.assert_array_equal(load_image(c3.files[0], 8, 1)[0], images[first])


def test_write_default_contributors_is_deterministic(tmp_path):
    a = discover_contributors(write_default_contributors(tmp_path / "a"))
    b = discover_contributors(write_default_contributors(tmp_path / "b"))
    assert [c.data_hash for c in a] == [c.data_hash for c in b]
    with pytest.raises(FileExistsError):
        write_default_contributors(tmp_path / "a")


def _good(folder, n=2, size=(8, 8), mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new(mode, size, color=0 if mode != "RGB" else (i, 2, 3)).save(folder / f"{i}.png")


def test_every_problem_is_reported_at_once_naming_files(tmp_path):
    root = tmp_path / "c"
    _good(root / "alice")
    _good(root / "bob")
    (root / "bob" / "zero.png").write_bytes(b"")
    good = root / "alice" / "0.png"
    (root / "alice" / "truncated.png").write_bytes(good.read_bytes()[:30])
    (root / "carol").mkdir()
    _good(root / "bad name")
    with pytest.raises(ContributorValidationError) as err:
        discover_contributors(root)
    text = str(err.value)
    assert "zero.png" in text and "zero-byte" in text
    assert "truncated.png" in text
    assert "carol" in text and "no PNG/JPEG images" in text
    assert "'bad name'" in text and "invalid contributor folder name" in text
    assert len(err.value.problems) == 4


def test_non_image_files_are_skipped_with_a_warning(tmp_path):
    root = tmp_path / "c"
    _good(root / "a")
    _good(root / "b")
    (root / "a" / "notes.txt").write_text("hello")
    (root / "a" / ".DS_Store").write_text("x")
    with pytest.warns(UserWarning, match="notes.txt"):
        found = discover_contributors(root)
    assert found[0].n_images == 2 and found[0].skipped == ("notes.txt",)


def test_fewer_than_two_contributors_and_missing_dir(tmp_path):
    _good(tmp_path / "c" / "only")
    with pytest.raises(ContributorValidationError, match="at least 2"):
        discover_contributors(tmp_path / "c")
    with pytest.raises(ContributorValidationError, match="no such directory"):
        discover_contributors(tmp_path / "nope")


def test_hash_changes_with_content(tmp_path):
    root = tmp_path / "c"
    _good(root / "a")
    _good(root / "b")
    before = {c.contributor: c.data_hash for c in discover_contributors(root)}
    Image.new("L", (8, 8), color=255).save(root / "a" / "0.png")
    after = {c.contributor: c.data_hash for c in discover_contributors(root)}
    assert before["a"] != after["a"] and before["b"] == after["b"]


@pytest.mark.parametrize("mode,size", [("L", (20, 10)), ("RGB", (8, 8)), ("RGBA", (9, 9)), ("I;16", (16, 16)), ("P", (8, 8))])
def test_any_mode_and_size_converts_to_model_shape(tmp_path, mode, size):
    path = tmp_path / "x.png"
    if mode == "I;16":
        arr = np.full(size[::-1], 65535, dtype=np.uint16)
        Image.fromarray(arr).save(path)
    elif mode == "RGBA":
        Image.new("RGBA", size, (0, 0, 0, 0)).save(path)  # fully transparent → white background
    else:
        Image.new(mode, size).save(path)
    gray = load_image(path, 8, 1)
    rgb = load_image(path, 4, 3)
    assert gray.shape == (1, 8, 8) and gray.dtype == np.uint8
    assert rgb.shape == (3, 4, 4)
    if mode in ("I;16", "RGBA"):
        assert gray.min() == 255  # full-scale 16-bit and transparent pixels map to white
