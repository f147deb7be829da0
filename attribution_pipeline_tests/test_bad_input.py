"""Bad input at the door, for the CLI (strict: nothing is written) and the sensor (the folder is left
out, the others registered) alike; duplicates flagged; a folder that appears mid-run waits."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import ContributorValidationError, discover_contributors
from attribution_pipeline.data.watch import watch_contributors
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.runner import run_valuation
from attribution_pipeline.stages import prepare_contributors
from attribution_pipeline.stages import register_contributors
from attribution_pipeline.storage.results import ResultStore
from attribution_pipeline_tests.conftest import write_digit_contributors
from attribution_pipeline_tests.test_contributors import _constant_png


def _truncated(folder):
    good = folder.parent / "digit_0" / sorted(p.name for p in (folder.parent / "digit_0").iterdir())[0]
    (folder / "cut.png").write_bytes(good.read_bytes()[:40])
    return "cut.png"


def _zero(folder):
    (folder / "zero.png").write_bytes(b"")
    return "zero.png"


def _not_an_image(folder):
    (folder / "fake.png").write_text("<html>not an image</html>")
    return "fake.png"


def _huge(folder):
    _constant_png(folder / "huge.png", 12_000, 12_000)
    return "huge.png"


CASES = {"truncated image": _truncated, "zero-byte file": _zero, "non-image named .png": _not_an_image,
         "12000 x 12000 PNG": _huge}


@pytest.fixture
def root(tmp_path):
    return write_digit_contributors(tmp_path / "c", classes=(0, 1, 7), per_class=6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_file_stops_the_cli_naming_it_and_only_leaves_its_contributor_out_of_the_sensor(
        root, tmp_path, capsys, case):
    bad = root / "newcomer"
    bad.mkdir()
    Image.new("L", (8, 8), 9).save(bad / "fine.png")
    name = CASES[case](bad)
    cfg = PipelineConfig().override({"contributors_dir": str(root), "workdir": str(tmp_path / "w")})
    assert run_valuation(cfg, quiet=True) == 2
    err = capsys.readouterr().err
    assert name in err and "newcomer" in err
    assert not (tmp_path / "w").exists()  # nothing written
    w = watch_contributors(root, {}, now=0.0, settle_seconds=0)
    assert sorted(w.accepted) == ["digit_0", "digit_1", "digit_7"]
    assert name in " ".join(w.rejected["newcomer"])


def test_empty_folder_and_bad_name_are_reported_and_left_out(root, tmp_path, capsys):
    (root / "empty").mkdir()
    shutil.copytree(root / "digit_7", root / "bad|name")
    cfg = PipelineConfig().override({"contributors_dir": str(root), "workdir": str(tmp_path / "w")})
    assert run_valuation(cfg, quiet=True) == 2
    err = capsys.readouterr().err
    assert "'empty' has no PNG/JPEG images" in err and "'bad|name'" in err
    w = watch_contributors(root, {}, now=0.0, settle_seconds=0)
    assert set(w.rejected) == {"empty", "bad|name"} and len(w.accepted) == 3


def test_a_non_image_file_is_skipped_with_a_warning_naming_it(root):
    (root / "digit_1" / "notes.txt").write_text("licence: CC-BY")
    with pytest.warns(UserWarning, match="notes.txt"):
        found = {c.contributor: c for c in discover_contributors(root)}
    assert found["digit_1"].skipped == ("notes.txt",)


def test_the_same_image_from_two_contributors_is_flagged_in_the_contributors_table(root, tmp_path):
    shared = sorted((root / "digit_0").iterdir())[0]
    shutil.copy(shared, root / "digit_7" / "also_mine.png")
    cfg = PipelineConfig().override({"contributors_dir": str(root), "workdir": str(tmp_path / "w")})
    layout = RunLayout.at(cfg.workdir)
    store = ResultStore(layout.database)
    register_contributors(store, prepare_contributors(cfg, layout))
    df = store.query("SELECT contributor, n_duplicate_images, duplicates_with FROM contributors ORDER BY 1")
    rows = {r["contributor"]: (r["n_duplicate_images"], r["duplicates_with"]) for r in df.iter_rows(named=True)}
    assert rows == {"digit_0": (1, ["digit_7"]), "digit_1": (0, []), "digit_7": (1, ["digit_0"])}


def test_a_run_values_its_validated_snapshot_only(root, tmp_path):
    """A folder that appears while a run reads the directory joins the next round; one that changes
    fails the run with a message naming it (never a partial contributor)."""
    cfg = PipelineConfig().override({"contributors_dir": str(root), "workdir": str(tmp_path / "w")})
    snapshot = {c.contributor: c.data_hash for c in discover_contributors(root)}
    (root / "late").mkdir()
    (root / "late" / "half.png").write_bytes(b"\x89PNG\r\n")  # still being copied
    manifest = prepare_contributors(cfg, RunLayout.at(cfg.workdir), snapshot=snapshot)
    assert [c["contributor"] for c in manifest["contributors"]] == ["digit_0", "digit_1", "digit_7"]
    Image.new("L", (8, 8), 200).save(root / "digit_1" / "added.png")
    with pytest.raises(ContributorValidationError, match="digit_1.*changed since it was validated"):
        prepare_contributors(cfg, RunLayout.at(cfg.workdir), snapshot=snapshot)


def test_names_with_spaces_and_non_ascii_letters_go_through_a_valuation(tiny_config, tmp_path):
    root = write_digit_contributors(tmp_path / "names", classes=(0, 1, 7), per_class=16)
    (root / "digit_0").rename(root / "Zoë Müller")
    (root / "digit_1").rename(root / "北京 archive")
    (root / "digit_7").rename(root / "studio 7 (2024)")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(root / "studio 7 (2024)" / "rgba.png")  # mixed modes in one contributor
    cfg = tiny_config.override({"contributors_dir": str(root), "valuation": {"budget": 6}})
    out = io.StringIO()
    assert run_valuation(cfg, out=out) == 0, out.getvalue()
    store = ResultStore(RunLayout.at(cfg.workdir).database)
    names = store.query("SELECT DISTINCT contributor FROM latest_shapley_values ORDER BY 1")["contributor"].to_list()
    assert names == sorted(["Zoë Müller", "北京 archive", "studio 7 (2024)"])
    assert "Zoë Müller" in out.getvalue()
