"""Reports of a replay: Markdown, JSON and a PNG of AUC / rolling AUC / NDCG@10 against the step.

``write_replay_reports(result, out_dir)`` writes ``replay.md``, ``replay.json`` and ``replay.png``
(matplotlib, headless Agg), like ``llmhyper evaluate``'s reports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

LABELS = {"frozen": "generated weights, frozen", "prior": "**prior-updated (ours)**",
          "ceiling": "LRwarm on everything (ceiling)"}


def _fmt(st: dict, digits: int = 4) -> str:
    m = st.get("mean")
    if m is None or not isinstance(m, (int, float)) or not math.isfinite(m):
        return "n/a"
    return f"{m:.{digits}f} ± {st['std']:.{digits}f}"


def markdown(result: dict) -> str:
    """The Markdown report: one row per policy, mean ± std over seeds."""
    cfg, d, s = result["config"], result["dataset"], result["summary"]
    neg = ("implicit negatives: every held-out user active in a step x every active ad launched by the "
           "step's end that the user had not clicked before it (all non-clicks kept)") if d["implicit_negatives"] \
        else "logged impressions of the held-out users in the step"
    sc = result["prior_scale"]
    if d["implicit_negatives"]:
        neg += (". Refresh data: " + ("each non-click weighed by the share of clicks that retired ads had "
                "received by the same age (click-delay distribution)" if result["prior_scale"].get("delay_weighting")
                else "every non-click of an active user counts fully")
                + (" (chosen on retired ads)" if result["prior_scale"].get("delay_objective") else ""))
    lines = [f"# Warm-up replay: {d['name']}", "",
             f"{d['n_active']} active ads, {d['n_users']} users ({1 - cfg['test_frac']:.0%} feed the refresh, "
             f"{cfg['test_frac']:.0%} are scored), steps of {cfg['step_days']:g} day(s) from the cutoff, "
             f"{cfg['seeds']} seeds (mean ± std over seeds). Scored pairs: {neg}.", "",
             f"Prior std (logits) {sc['scale']:g} on the user weights, {sc.get('intercept_scale', sc['scale']):g} on the "
             "intercept: " + ("chosen on retired ads only by replaying their "
             "early days" if sc.get("chosen") else "given") + ". Cold-start period: steps until the rolling AUC "
             f"({cfg['rolling']} steps pooled) is within {cfg['band']} of the ceiling's and stays there.", "",
             f"| policy | cold-start period (steps) | per seed | AUC first {cfg['first_days']:g} days (mean of steps) | "
             f"AUC first {cfg['first_days']:g} days (pooled) | AUC all steps | NDCG@10 | log-loss | "
             "worst step vs frozen | worst rolling vs frozen |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n, row in s.items():
        cs = row["cold_start_steps"]
        per = ", ".join("never" if v is None else str(v) for v in cs["per_seed"])
        lab = LABELS.get(n, f"hard switch at {n.split('@')[1]} clicks" if n.startswith("switch@") else n)
        lines.append(f"| {lab} | {_fmt(cs, 1)} | {per} | {_fmt(row['auc_first'])} | {_fmt(row['auc_first_pooled'])} | "
                     f"{_fmt(row['auc'])} | {_fmt(row['ndcg10'])} | {_fmt(row['log_loss'])} | "
                     f"{_fmt(row['worst_vs_frozen'])} | {_fmt(row['worst_vs_frozen_rolling'])} |")
    lines += ["", "worst step vs frozen = max over steps of (frozen AUC - policy AUC), per seed, averaged "
              "(per-step AUC; the rolling column uses the rolling AUC). Pooled = one AUC over every scored "
              "pair of the first days.",
              "A cold-start period of 'never' means the rolling AUC was outside the band at the last step; "
              "the mean is over the seeds that reached it.", ""]
    if result.get("checks"):
        lines += ["Checks: " + ", ".join(f"{k} = {v}" for k, v in result["checks"].items()), ""]
    lines += _paired_section(result)
    return "\n".join(lines)


def _ci(r: dict) -> str:
    ok = all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in ("diff", "lo", "hi"))
    return f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]" if ok else "n/a"


def _paired_section(result: dict) -> list[str]:
    """Per seed, the paired first-days AUC differences with their 95% intervals, and the steps
    on which the prior-updated policy is below frozen by more than 0.01 (point, and surely)."""
    from offline.warm.paired import MIN_CLUSTERS
    from offline.warm.replay import paired_first

    per_seed = result.get("per_seed_paired") or []
    cfg = result["config"]
    sw = f"switch@{cfg['min_clicks']}"
    pairs = [("prior", sw), ("prior", "frozen"), (sw, "frozen")]
    rows = {p: paired_first(per_seed, *p) for p in pairs}
    if not any(rows.values()):
        return []
    lines = [f"## Can the data tell? Paired AUC differences, first {cfg['first_days']:g} days pooled", "",
             "Both policies score the same pairs; the 95% interval is a bootstrap over held-out users "
             f"({cfg['resamples']} resamples, each user's pairs drawn together; ads are not resampled). An "
             "interval that holds 0 means the data cannot tell the two apart. With few users the interval "
             "runs narrow (with no true difference and 10-30 users, 8-9% of 95% intervals missed 0 in a "
             "simulation), so an interval that just excludes 0 is weaker evidence than 95%.", "",
             "| seed | clicks / pairs / users (with a click) | " + " | ".join(f"{a} - {b}" for a, b in pairs) + " |",
             "|---|---|" + "---|" * len(pairs)]
    for i in range(max(len(v) for v in rows.values())):
        ref = next(v[i] for v in rows.values() if len(v) > i)
        cells = [_ci(rows[p][i]) if len(rows[p]) > i else "n/a" for p in pairs]
        lines.append(f"| {i} | {ref['n_pos']} / {ref['n_pairs']} / {ref['n_clusters']} ({ref.get('n_pos_clusters', '?')}) | "
                     + " | ".join(cells) + " |")
    sums = result.get("per_seed_summary") or []
    n_steps = len(result["steps"].get("t", []))
    for tag, what in (("steps", "on the step's own pairs"),
                      ("rolling", f"on the last {cfg['rolling']} steps' pairs pooled, windows with at least "
                                  f"{cfg['min_pos']} clicks (the rolling AUC)")):
        got = {k: [s.get("prior", {}).get(f"{tag}_{k}") for s in sums]
               for k in ("below_frozen_by_gap", "surely_below_frozen_by_gap", "judged_vs_frozen")}
        if any(v is not None for v in got["below_frozen_by_gap"]):
            lines += ["", f"Steps (of {n_steps}) where prior-updated is below frozen by more than 0.01 AUC, {what}: "
                      f"{got['below_frozen_by_gap']} by the point estimate; {got['surely_below_frozen_by_gap']} of the "
                      f"{got['judged_vs_frozen']} judged steps (at least {MIN_CLUSTERS} scored users with a click) "
                      "have the whole 95% interval below -0.01 (per seed)."]
    lines.append("")
    return lines


def plot(result: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = result["steps"]
    names = [n for n in st if n != "t"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("auc", "rolling_auc", "ndcg10"), ("AUC per step", "rolling AUC", "NDCG@10 per step")):
        for n in names:
            y = [float("nan") if v is None else v for v in st[n][key]]
            ax.plot(range(len(y)), y, label=n, lw=1.0, marker="." if key != "rolling_auc" else None, ms=3)
        ax.set_xlabel(f"step ({result['config']['step_days']:g} d) since cutoff")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['dataset']['name']}: warm-up policies (mean over {result['config']['seeds']} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_replay_reports(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write replay.md, replay.json and replay.png into ``out_dir`` (created)."""
    from offline.evaluation.report import save_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "replay.md"
    md.write_text(markdown(result))
    js = out / "replay.json"
    save_json(result, js)
    return [str(md), str(js), plot(result, out / "replay.png")]
