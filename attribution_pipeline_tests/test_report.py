"""The attribution report: `run` then `report` writes the page; after `evaluate` it holds every section;
a real headless Chromium loads every figure; the Dagster asset page's metadata (GraphQL) carries the
markdown and the images."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from attribution_pipeline.cli import main
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.stages.report import PAGE, report_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A tiny valued work directory, reported once before and once after its evaluation."""
    from attribution_pipeline.config import PipelineConfig, load_preset
    from attribution_pipeline.runner import run_evaluation, run_valuation
    from attribution_pipeline_tests.conftest import TINY_OVERRIDES, write_digit_contributors

    tmp = tmp_path_factory.mktemp("report")
    contributors = write_digit_contributors(tmp / "contributors", classes=(0, 1, 2, 7), per_class=12)
    cfg = (PipelineConfig().override(load_preset("digits")).override(TINY_OVERRIDES)
           .override({"contributors_dir": str(contributors), "workdir": str(tmp / "work"),
                      "train": {"steps": 20}, "valuation": {"budget": 8},
                      "lds": {"n_test": 4, "n_seeds": 2, "n_boot": 200, "n_random": 200},
                      "counterfactual": {"n_random": 1, "n_seeds": 2},
                      "baselines": {"n_timesteps": 2, "dim": 32, "journey_points": 2}}))
    assert run_valuation(cfg, quiet=True, out=io.StringIO()) == 0
    page = report_dir(RunLayout.at(cfg.workdir)) / PAGE
    assert main(["report", "--workdir", cfg.workdir]) == 0
    before = page.read_text()
    assert run_evaluation(cfg, ("lds_results", "counterfactual_results"), out=io.StringIO()) == 0
    assert main(["report", "--workdir", cfg.workdir, "--skip-baselines"]) == 0
    return cfg, before, page


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_report_after_run_alone_says_what_is_missing_and_after_evaluate_has_every_section(reported):
    cfg, before, page = reported
    # after `run` and `report`: Shapley tables, baselines (rank agreement) and images; LDS waits for evaluate
    assert "Shapley values" in before and "Rank agreement" in before
    assert "Not yet computed" in before and "evaluate --only lds" in before
    html = page.read_text()
    assert "Not yet computed" not in html
    for title in ("Shapley values", "Linear datamodeling score", "Counterfactuals", "Images", "Rank agreement"):
        assert title in html, title
    files = _images(html)
    assert {"lds_versus_cost.png", "counterfactual.png", "samples_full_model.png", "retrained_without_top.png",
            "agreement_quality.png", "agreement_diversity.png"} <= set(files)
    for f in files:  # every figure the page links exists and is a PNG
        assert (page.parent / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    assert "http://" not in html and "https://" not in html and "<script" not in html  # nothing fetched
    # the Table-1 rows: the default Shapley variant and the baselines, with the random range and ceiling
    assert "shapley-sft" in html and "trak" in html and "random 95% range" in html and "oracle ceiling" in html


def _load_in_chromium(page: Path, tmp: Path) -> str:
    """The page's DOM after load in headless Chromium, with each image's natural size recorded by a
    probe script injected into a copy of the page (the report itself has no script)."""
    copy = tmp / "probe"
    shutil.copytree(page.parent, copy)
    probe = ("<script>window.addEventListener('load', () => { document.querySelectorAll('img').forEach(i => "
             "i.setAttribute('data-natural', i.naturalWidth + 'x' + i.naturalHeight)); "
             "document.body.setAttribute('data-tables', document.querySelectorAll('table').length); });</script>")
    (copy / PAGE).write_text(page.read_text().replace("</body>", probe + "</body>"))
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", (copy / PAGE).as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it: apt-get install chromium)")
def test_every_figure_loads_in_headless_chromium(reported, tmp_path):
    _, _, page = reported
    dom = _load_in_chromium(page, tmp_path)
    sizes = re.findall(r'data-natural="(\d+)x(\d+)"', dom)
    assert len(sizes) == len(_images(page.read_text())) > 5
    assert all(int(w) > 0 and int(h) > 0 for w, h in sizes), sizes
    assert int(re.search(r'data-tables="(\d+)"', dom).group(1)) >= 3


def test_the_asset_page_metadata_carries_the_markdown_and_images(reported):
    from attribution_pipeline_tests.test_webserver import _graphql, serving

    cfg, _, page = reported
    query = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { __typename ... on Asset {
      assetMaterializations(limit: 1) { metadataEntries { label __typename
        ... on MarkdownMetadataEntry { mdStr } ... on PathMetadataEntry { path } } } } } }"""
    with serving(RunLayout.at(cfg.workdir)) as port:
        asset = _graphql(port, query, {"key": {"path": ["attribution_report"]}})["data"]["assetOrError"]
    assert asset["__typename"] == "Asset"
    meta = {e["label"]: e for e in asset["assetMaterializations"][0]["metadataEntries"]}
    assert meta["page"]["path"] == str(page)
    md = meta["summary"]["mdStr"]
    assert md.count("](data:image/png;base64,") == len(_images(page.read_text()))
    assert "**quality**: top" in md


def test_feature_similarity_reads_a_local_encoder_folder_when_one_is_configured(reported, model_zoo, tmp_path):
    """`baselines.encoder` (the paper's CLIP similarity on the presets): a transformers folder, loaded
    locally; its path and hash land in the provenance, and a missing folder is named before any work."""
    import json

    from attribution_pipeline.inputs import MissingInputError, check_local_inputs
    from attribution_pipeline.stages.baselines import compute_baselines
    from attribution_pipeline.storage.results import ResultStore

    cfg, _, _ = reported
    layout = RunLayout.at(cfg.workdir)
    store = ResultStore(layout.database)
    default = compute_baselines(cfg, layout, store, methods=["feature_sim_max"])
    clip = cfg.override({"baselines": {"encoder": str(model_zoo["clip"])}})
    out = compute_baselines(clip, layout, store, methods=["feature_sim_max", "feature_sim_mean"])
    assert set(out.values) == {"feature_sim_max", "feature_sim_mean"}
    prov = json.loads(next(r["provenance"] for r in out.rows if r["method"] == "feature_sim_max"))
    assert prov["features"].startswith(f"encoder {model_zoo['clip']}") and prov["aggregation"] == "max"
    assert not (out.values["feature_sim_max"]["quality"] == default.values["feature_sim_max"]["quality"]).all()
    with pytest.raises(MissingInputError, match="baselines.encoder"):
        check_local_inputs(cfg.override({"baselines": {"encoder": str(tmp_path / "no-clip")}}))


def test_cached_baselines_report_what_they_cost_when_computed(reported):
    """LOO's seconds are what its N + 1 utilities cost as first measured, and TRAK's what its gradient
    caches took to compute, not the time to read them back (the valuation, an earlier `report` or a
    benchmark often computed them first)."""
    from attribution_pipeline.stages import contributor_ids
    from attribution_pipeline.stages.baselines import compute_baselines, gradients_dir
    from attribution_pipeline.storage.artifacts import read_manifest
    from attribution_pipeline.storage.results import ResultStore

    cfg, _, _ = reported
    layout = RunLayout.at(cfg.workdir)
    store = ResultStore(layout.database)
    out = compute_baselines(cfg, layout, store, methods=["loo_sft", "trak"])  # all cached by `report`
    ids = contributor_ids(layout)
    members = [sorted(ids)] + [sorted(c for c in ids if c != i) for i in ids]
    df = store.query("SELECT u.coalition_key, any_value(u.elapsed_s) AS s, any_value(c.members) AS members "
                     "FROM utilities u JOIN coalitions c USING (coalition_key) WHERE u.method = 'sft' GROUP BY ALL")
    paid = sum(s for s, m in zip(df["s"], df["members"]) if sorted(m) in members)
    # a tiny model trains in well under a second per coalition on a fast machine (CI saw 0.98 s for all
    # five), so the size of `paid` proves nothing; what does is that LOO's cost is the stored first cost
    assert len(members) == len(ids) + 1 and paid > 0
    assert out.costs["loo_sft"] == pytest.approx(paid, rel=1e-6)
    computed = sum(read_manifest(gradients_dir(layout, n))["meta"]["seconds"] for n in ("train_loss", "generated_loss"))
    assert computed > 0 and out.costs["trak"] >= computed
