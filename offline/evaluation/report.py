"""Reports of an evaluation run: Markdown (paper Table 1 layout), JSON, PNG plots.

``write_reports(result, out_dir)`` writes ``results.md``, ``results.json`` and the plots
``per_ad_auc.png`` (distribution over active ads, seed 0), ``reliability.png`` (reliability
diagram, seed 0) and ``metric_vs_shots.png`` (LLM variants only). Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = (("auc", "AUC"), ("ndcg5", "NDCG@5"), ("ndcg10", "NDCG@10"), ("per_ad_auc", "per-ad AUC"),
           ("ctr_rho", "CTR ρ"), ("log_loss", "log-loss"), ("ece", "ECE"), ("hr5", "HR@5*"), ("cov5", "Cov@5*"))
LABELS = {
    "lrwarm": "LRwarm (upper reference)",
    "lrcold": "LRcold (median of retired weights)",
    "popularity": "popularity-only (neighbours' CTR)",
    "embedding": "EmbT5-style (user profile . ad embedding)",
    "knn-raw": "kNN neighbour weights (raw)",
    "knn-raw+cal": "kNN + unit-norm + shift",
    "default": "**default: knn-content (ours)**",
}
ORDER = ("embedding", "lrcold", "popularity", "knn-raw", "knn-raw+cal")


def _fmt(stat: dict | None, digits: int = 4) -> str:
    if not stat or stat.get("n", 0) == 0 or stat.get("mean") is None or not math.isfinite(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _rows(summary: dict) -> list[str]:
    names = [n for n in ORDER if n in summary]
    names += sorted(n for n in summary if n.startswith("llm["))
    names += [n for n in ("default", "lrwarm") if n in summary]
    names += [n for n in summary if n not in names]
    return names


def markdown(result: dict) -> str:
    """The Markdown report: Table 1 layout (mean ± std over seeds), gap closed, latency."""
    s = result["summary"]
    d = result["dataset"]
    cfg = result["config"]
    lines = [f"# Cold-start evaluation: {d['name']}", "",
             f"{d['n_retired']} retired ads, {d['n_active']} active ads, {d['n_users']} users, "
             f"{d['n_features']} features; users split {1 - cfg['test_frac']:.0%}/{cfg['test_frac']:.0%} "
             f"at random, {cfg['seeds']} seeds (mean ± std over seeds); retired l2 = {d['l2']:g}.", "",
             "| Model | " + " | ".join(c for _, c in COLUMNS) + " | gap closed | L (ms) |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    gap = result.get("gap_closed", {})
    labels = dict(LABELS)
    if cfg.get("default_options"):
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(cfg["default_options"].items()))
        labels["default"] = f"**knn-content VARIANT ({opts}), not the default**"
    for n in _rows(s):
        lat = s[n].get("latency_ms")
        g = gap.get(n)
        g_txt = "n/a" if g is None else f"{g:.0%}"
        l_txt = "n/a" if not lat else f"{lat['mean']:.3f}"
        lines.append(f"| {labels.get(n, n)} | " + " | ".join(_fmt(s[n].get(k)) for k, _ in COLUMNS)
                     + f" | {g_txt} | {l_txt} |")
    lines += ["", "*HR@5 / Cov@5: " + result.get("derived_labels", "derived labels") + "*", "",
              "CTR ρ = Spearman correlation across active ads between the mean predicted CTR over the "
              "test users and the observed CTR: whether a method knows which new ads will be popular "
              "(per-ad AUC measures who clicks an ad; this measures how many do). For the embedding "
              "baseline it uses the mean similarity.", "",
              "gap closed = (AUC - AUC_LRcold) / (AUC_LRwarm - AUC_LRcold). L = mean per-user Rank "
              "latency (top 10 by user id) through a real gRPC server on 127.0.0.1 over the evaluation "
              "store, seed-0 version of each method; n/a for the embedding baseline (not a linear model). "
              "Log-loss / ECE are n/a for the embedding baseline (its scores are similarities, not CTRs).", ""]
    if result.get("llm"):
        lines += ["## LLM generation", "", "| variant | model | failed ads | calls | tokens in/out | seconds |",
                  "|---|---|---|---|---|---|"]
        for n, info in result["llm"].items():
            c = info.get("cost", {})
            lines.append(f"| {n} | {info.get('model')} | {info.get('n_failed')} | {c.get('calls', 0)} | "
                         f"{c.get('input_tokens', 0)}/{c.get('output_tokens', 0)} | {info.get('seconds', 0):.1f} |")
        lines.append("")
    t = result.get("timings", {})
    lines += ["Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if isinstance(v, (int, float))), ""]
    return "\n".join(lines)


def plots(result: dict, out: Path) -> list[str]:
    """Write the PNG plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    pa = result.get("per_ad_auc_seed0", {})
    if pa:
        names = [n for n in _rows(result["summary"]) if n in pa and pa[n]]
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
        ax.boxplot([pa[n] for n in names], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("per-ad AUC (seed 0, active ads)")
        ax.set_title("Per-ad AUC distribution")
        fig.tight_layout()
        p = out / "per_ad_auc.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(str(p))
    rel = result.get("reliability_seed0", {})
    if rel:
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for n, t in rel.items():
            pts = [(m, o) for m, o, c in zip(t["mean_pred"], t["observed"], t["count"])
                   if c and m is not None and o is not None and math.isfinite(m) and math.isfinite(o)]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=n)
        ax.set_xlabel("mean predicted CTR (bin)")
        ax.set_ylabel("observed click rate")
        ax.set_title("Reliability (seed 0, held-out users)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / "reliability.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(str(p))
    s = result["summary"]
    llm = [n for n in s if n.startswith("llm[")]
    if llm:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        pat = re.compile(r"llm\[(.+?),(\d+)-shot,(caption|no-caption)\](\+cal)?")
        for ax, key in zip(axes, ("auc", "ndcg10", "per_ad_auc")):
            series: dict[str, list[tuple[int, float, float]]] = {}
            for n in llm:
                m = pat.fullmatch(n)
                if not m:
                    continue
                lab = f"{m.group(3)}{' +cal' if m.group(4) else ''}"
                st = s[n][key]
                series.setdefault(lab, []).append((int(m.group(2)), st["mean"], st["std"]))
            for lab, pts in series.items():
                pts.sort()
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                            capsize=3, label=lab)
            for ref in ("lrcold", "default", "lrwarm"):
                if ref in s:
                    ax.axhline(s[ref][key]["mean"], ls=":", lw=1, color={"lrcold": "red", "default": "green",
                                                                          "lrwarm": "black"}[ref], label=ref)
            ax.set_xlabel("shots")
            ax.set_title(key)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        p = out / "metric_vs_shots.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(str(p))
    return files


def save_json(result: dict, path: str | Path) -> None:
    """Write a result dict as JSON (NaN written as null)."""
    def clean(o: Any) -> Any:
        if isinstance(o, float):
            return o if np.isfinite(o) else None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    Path(path).write_text(json.dumps(clean(result), indent=1))


def write_reports(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write results.md, results.json and the PNG plots into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    md.write_text(markdown(result))
    js = out / "results.json"
    save_json(result, js)
    return [str(md), str(js), *plots(result, out)]
