import numpy as np
import pytest
from PIL import Image

from attribution_pipeline.data.contributors import (
    MAX_IMAGE_PIXELS, ContributorValidationError, decoded_pixels, discover_contributors, load_image,
    scan_contributors,
)


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
    _good(root / "bad|name")
    with pytest.raises(ContributorValidationError) as err:
        discover_contributors(root)
    text = str(err.value)
    assert "zero.png" in text and "zero-byte" in text
    assert "truncated.png" in text
    assert "carol" in text and "no PNG/JPEG images" in text
    assert "'bad|name'" in text and "invalid contributor folder name" in text
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


def test_scan_keeps_good_folders_and_rejects_each_bad_one_with_its_reasons(tmp_path):
    root = tmp_path / "c"
    _good(root / "alice")
    _good(root / "bob")
    (root / "bob" / "zero.png").write_bytes(b"")
    (root / "carol").mkdir()
    (root / "dave").mkdir()
    (root / "dave" / "fake.png").write_text("not an image")
    scan = scan_contributors(root)
    assert scan.ids == ["alice"]
    assert set(scan.rejected) == {"bob", "carol", "dave"}
    assert "zero-byte" in scan.rejected["bob"][0] and "zero.png" in scan.rejected["bob"][0]
    assert "no PNG/JPEG images" in scan.rejected["carol"][0]
    assert "fake.png" in scan.rejected["dave"][0] and "not a readable" in scan.rejected["dave"][0]


def test_names_with_spaces_and_non_ascii_are_contributors_normalised_to_nfc(tmp_path):
    import unicodedata

    root = tmp_path / "c"
    _good(root / "Zoë Müller")
    _good(root / unicodedata.normalize("NFD", "Łódź studio"))
    _good(root / "北京 archive")
    found = discover_contributors(root)
    assert [c.contributor for c in found] == sorted(["Zoë Müller", "Łódź studio", "北京 archive"])
    assert all(unicodedata.is_normalized("NFC", c.contributor) for c in found)


def test_names_that_break_paths_or_collide_are_rejected(tmp_path):
    import unicodedata

    root = tmp_path / "c"
    _good(root / "ok")
    _good(root / " padded")
    _good(root / "tab\there")
    _good(root / "é")
    _good(root / unicodedata.normalize("NFD", "é"))
    scan = scan_contributors(root)
    assert scan.ids == ["ok"]
    text = str(scan.rejected)
    assert "starts or ends with a space" in text and "invalid contributor folder name" in text
    assert "same contributor id" in text


def test_byte_identical_images_of_two_contributors_are_flagged(tmp_path):
    root = tmp_path / "c"
    _good(root / "a", n=3)
    _good(root / "b", n=1)
    Image.new("L", (8, 8), color=77).save(root / "b" / "own.png")
    (root / "c").mkdir()
    (root / "c" / "copy.png").write_bytes((root / "a" / "0.png").read_bytes())
    dup = scan_contributors(root).duplicates()
    assert dup["a"] == {"b": 1, "c": 1} and dup["b"] == {"a": 1, "c": 1} and dup["c"] == {"a": 1, "b": 1}


def _constant_png(path, width, height):
    """A valid grayscale PNG of a constant image, streamed row by row: never holds the pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" + b"\x80" * width
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_12000_square_png_rejects_its_contributor_without_being_decoded(tmp_path):
    import resource
    import time

    root = tmp_path / "c"
    _good(root / "a")
    _good(root / "b")
    _constant_png(root / "b" / "huge.png", 12_000, 12_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    scan = scan_contributors(root)
    assert time.perf_counter() - t0 < 30
    assert scan.ids == ["a"]
    msg = scan.rejected["b"][0]
    assert "huge.png" in msg and "144,000,000 pixels" in msg and f"{MAX_IMAGE_PIXELS:,}" in msg
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200  # the 144-megapixel image was never decoded


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (12_000, 9_000), (200, 10, 10)).save(path, quality=50)
    with Image.open(path) as im:
        assert decoded_pixels(im) == 1_500 * 1_125
    root = tmp_path / "c"
    _good(root / "a")
    (root / "b").mkdir()
    path.replace(root / "b" / "big.jpg")
    assert scan_contributors(root).ids == ["a", "b"]
    arr = load_image(root / "b" / "big.jpg", 8, 3)
    assert arr.shape == (3, 8, 8) and abs(int(arr[0].mean()) - 200) < 8


def test_mixed_modes_in_one_contributor_load_to_one_shape(tmp_path):
    from attribution_pipeline.data.contributors import load_contributor_images

    folder = tmp_path / "c" / "mixed"
    folder.mkdir(parents=True)
    Image.new("L", (8, 8), 10).save(folder / "l.png")
    Image.new("RGB", (12, 9), (1, 2, 3)).save(folder / "rgb.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(folder / "rgba.png")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(folder / "i16.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(folder / "photo.jpg")
    _good(tmp_path / "c" / "other")
    found = {c.contributor: c for c in discover_contributors(tmp_path / "c")}
    arr = load_contributor_images(found["mixed"], 8, 1)
    assert arr.shape == (5, 1, 8, 8) and arr.dtype == np.uint8


def test_member_arrays_stack_in_member_order_with_member_labels(tmp_path):
    from attribution_pipeline.data.contributors import stack_member_arrays

    np.save(tmp_path / "b.npy", np.full((2, 1, 2, 2), 7, dtype=np.uint8))
    np.save(tmp_path / "a.npy", np.full((3, 1, 2, 2), 1, dtype=np.uint8))
    rows, labels = stack_member_arrays([tmp_path / "b.npy", tmp_path / "a.npy"])
    assert rows.shape == (5, 1, 2, 2) and rows[:2].max() == 7 and rows[2:].max() == 1
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(FileNotFoundError, match=r"c\.npy is missing: materialize the `contributors` asset first \(why\)"):
        stack_member_arrays([tmp_path / "a.npy", tmp_path / "c.npy"], " (why)")
