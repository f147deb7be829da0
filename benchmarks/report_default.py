"""The baselines' cost on a valued work directory and screenshots of its report (for the README).

Run:  python benchmarks/report_default.py [--workdir data/runs/default]
      (after `attribution-pipeline run` on that work directory; `evaluate` first fills the LDS sections)

1. ``attribution-pipeline report`` (computes ``baseline_attributions``, then the page), timed as a whole.
2. Seconds of each baseline from the ``attributions`` table (a shared gradient cache counted in full for
   each method that reads it) and the gradient family's total (its caches' features, once each).
3. Headless Chromium screenshots of the report page and of the ``attribution_report`` asset page in the
   Dagster UI (``dagster-webserver`` on the same work directory).
Writes benchmarks/results/baselines-default.md, report.png and report-asset-page.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from attribution_pipeline.layout import RunLayout  # noqa: E402


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        sys.exit("Chromium is needed for the screenshots (apt-get install chromium)")
    return exe


def screenshot(url: str, out: Path, size: str, budget_ms: int = 15000) -> None:
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=300)


def asset_page(layout: RunLayout, out: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(layout.dagster_home), "ATTRIBUTION_PIPELINE_WORKDIR": str(layout.workdir)}
    exe = Path(sys.executable).parent / "dagster-webserver"
    proc = subprocess.Popen([str(exe), "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                time.sleep(1)
        time.sleep(5)  # the code location loads after the server answers
        # the UI's one-time "join the community" dialog would cover the page: mark it seen, as its Skip does
        body = json.dumps({"query": "mutation { setNuxSeen }"}).encode()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body,
                                                      {"Content-Type": "application/json"}), timeout=30)
        screenshot(f"http://127.0.0.1:{port}/assets/attribution_report", out, "1400,1800", 30000)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(ROOT / "data" / "runs" / "default"))
    ap.add_argument("--skip-report", action="store_true", help="use the report and baselines already there")
    ap.add_argument("--about", default="", help="what the work directory is, for the results file")
    args = ap.parse_args()
    layout = RunLayout.at(args.workdir)
    from attribution_pipeline.cli import main as cli
    from attribution_pipeline.storage.results import ResultStore

    t0 = time.perf_counter()
    if not args.skip_report and cli(["report", "--workdir", str(layout.workdir)]) != 0:
        return 1
    wall = time.perf_counter() - t0
    store = ResultStore(layout.database)
    rows = store.query("SELECT method, family, max(cost_s) AS s, any_value(provenance) AS provenance FROM attributions "
                       "WHERE computed_at = (SELECT max(computed_at) FROM attributions) GROUP BY ALL "
                       "ORDER BY family, method").to_dicts()
    grad = sum(json.loads((p / "manifest.json").read_text())["meta"]["seconds"]
               for p in (layout.workdir / "baselines" / "gradients").iterdir() if (p / "manifest.json").is_file())
    n = store.query("SELECT count(*) AS n FROM contributors WHERE removed_at IS NULL")["n"][0]
    L = [f"# Baseline attributions on `{layout.workdir.name}`: cost", "",
         f"`python benchmarks/report_default.py --workdir {args.workdir}`{'; ' + args.about if args.about else ''}; "
         f"{n} contributors; {os.cpu_count()} cores. "
         + ("" if args.skip_report else f"`attribution-pipeline report` (baselines + page) took {wall:.0f} s wall. ")
         + f"Gradient family: {grad:.0f} s for its feature caches (train and generated images, "
         "loss and D-TRAK outputs, journey), computed once and shared.", "",
         "| method | family | seconds (shared caches counted in full) |", "|---|---|---|"]
    L += [f"| {r['method']} | {r['family']} | {r['s']:.1f} |" for r in rows]
    L += ["", f"Provenance of the gradient family: `{next((r['provenance'] for r in rows if r['method'] == 'trak'), '{}')}`",
          "", "Screenshots: [report](report.png), [asset page](report-asset-page.png).", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "baselines-default.md").write_text("\n".join(L))
    page = layout.workdir / "report" / "index.html"
    screenshot(page.as_uri(), RESULTS / "report.png", "1200,2600")
    asset_page(layout, RESULTS / "report-asset-page.png")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
