"""The report's figures as PNG bytes (matplotlib, headless Agg backend; no display, no fonts fetched).

Each function takes plain rows (dicts, as the DuckDB tables give them) and returns the PNG's bytes,
so the stage decides where they go (files beside the HTML page, data URIs in the Dagster metadata).
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def lds_versus_cost(rows: Sequence[dict], properties: Sequence[str]) -> bytes:
    """LDS (with its interval) against cost in seconds, one panel per property: Shapley variants as
    labelled red circles, baselines as open markers coloured by family; the random range of the test
    set as a grey band. rows: {property, method, family, lds, lo, hi, cost_s, random_lo, random_hi};
    rows without a cost are left out."""
    families = sorted({r["family"] for r in rows if r["family"] != "shapley"})
    colour = {f: f"C{k % 10}" for k, f in enumerate(families)}
    fig, axes = plt.subplots(1, max(1, len(properties)), figsize=(5.4 * max(1, len(properties)), 4.4), squeeze=False)
    for ax, prop in zip(axes[0], properties):
        sub = [r for r in rows if r["property"] == prop and r["lds"] is not None and r["cost_s"] is not None]
        band = [(r["random_lo"], r["random_hi"]) for r in sub if r["random_lo"] is not None]
        if band:
            ax.axhspan(min(b[0] for b in band), max(b[1] for b in band), color="0.9", label="random 95% range")
        seen = set()
        for r in sub:
            cost = max(float(r["cost_s"]), 0.1)
            err = [[r["lds"] - r["lo"]], [r["hi"] - r["lds"]]] if r["lo"] is not None else None
            if r["family"] == "shapley":
                ax.errorbar([cost], [r["lds"]], yerr=err, fmt="o", ms=7, capsize=2, color="C3")
                ax.annotate(r["method"], (cost, r["lds"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
            else:
                label = r["family"] if r["family"] not in seen else None
                seen.add(r["family"])
                ax.errorbar([cost], [r["lds"]], yerr=err, fmt="s", ms=5, mfc="white", capsize=2, alpha=0.8,
                            color=colour[r["family"]], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("cost (seconds, log scale)")
        ax.set_ylabel("LDS (Spearman × 100)")
        ax.set_title(prop)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def counterfactual_curves(rows: Sequence[dict], properties: Sequence[str]) -> bytes:
    """Relative change of the property (%) after removing the top fraction by each ranking, with the
    seeds' interval; random removals of the same size as grey points. rows: counterfactual_results."""
    fig, axes = plt.subplots(1, max(1, len(properties)), figsize=(5.2 * max(1, len(properties)), 4.2), squeeze=False)
    for ax, prop in zip(axes[0], properties):
        sub = [r for r in rows if r["property"] == prop and r["scenario"] in ("remove_top", "remove_random")]
        rankings = sorted({r["ranking"] for r in sub if r["ranking"] != "random"})
        for k, name in enumerate(rankings):
            pts = sorted((r["fraction"], 100 * r["relative_change"], r["rc_lo"], r["rc_hi"]) for r in sub
                         if r["ranking"] == name)
            x = np.array([p[0] for p in pts]) + 0.006 * (k - (len(rankings) - 1) / 2)  # side by side
            y = np.array([p[1] for p in pts])
            lo = np.array([100 * p[2] if p[2] is not None else p[1] for p in pts])
            hi = np.array([100 * p[3] if p[3] is not None else p[1] for p in pts])
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", ms=4, capsize=2, label=name)
        rnd = [(r["fraction"], 100 * r["relative_change"]) for r in sub if r["ranking"] == "random"]
        if rnd:
            ax.scatter([p[0] for p in rnd], [p[1] for p in rnd], color="0.6", marker="x", label="random removals", zorder=3)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_xlabel("fraction of contributors removed")
        ax.set_ylabel("relative change of the property (%)")
        ax.set_title(prop)
        ax.legend(fontsize=7)
    return _png(fig)


def rank_agreement(matrix: np.ndarray, names: Sequence[str], title: str) -> bytes:
    """A heat map of Spearman correlations between methods' contributor values."""
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.42 * n, 0.6 + 0.42 * n))
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), names, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i in range(n):
        for j in range(n):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=5.5)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _png(fig)


def image_grid(images_uint8: np.ndarray, columns: int = 8, scale: int | None = None) -> bytes:
    """``(N, H, W)`` or ``(N, H, W, C)`` uint8 images tiled ``columns`` wide, upscaled ``scale``× (nearest;
    default: about 64 pixels per image side, at most 8×)."""
    x = np.asarray(images_uint8)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W[, C]) array, got {x.shape}")
    n, h, w, c = x.shape
    scale = scale or max(1, min(8, 64 // h))
    cols = min(columns, n)
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[k]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
