"""Reports of a launch simulation: ``launch.md``, ``launch.json`` and ``launch.png``.

The PNG (matplotlib, headless Agg, as the replay and evaluation reports) shows cumulative regret
and cumulative clicks against the step for greedy and Thompson, mean over seeds with a band of
one standard deviation. JSON goes through :func:`offline.evaluation.report.save_json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from offline.warm.launch import POLICIES


def _ms(st: dict, digits: int = 1) -> str:
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}"


def markdown(result: dict) -> str:
    """The Markdown report: the end-of-launch table, a per-step excerpt and the diagnosis."""
    cfg, w, s, ch = result["config"], result["world"], result["summary"], result["checks"]
    imp = cfg["steps"] * cfg["users_per_step"] * cfg["top_k"]
    lines = [f"# Simulated launch: {w['dataset']}", "",
             f"{w['n_cold_ads']} cold ads go live together; {cfg['steps']} steps x {cfg['users_per_step']} requests "
             f"(users drawn uniformly from {w['n_users']}), top {cfg['top_k']} shown each ({imp} impressions per "
             f"policy and seed); clicks drawn from the TRUE model; {cfg['seeds']} seeds (mean ± std over seeds; "
             "users, click uniforms and Thompson request seeds shared by both policies within a seed).", "",
             f"Start: the default generator's ({w['generator']}) build output as prior mean, std = its per-feature "
             f"spread x {w['prior_scale']:.3g} (intercept x {w['intercept_scale']:.3g}), {w['prior_scale_how']}; "
             f"spread '{w['spread']}'. After every step each policy refits (MAP + {cfg['laplace']} Laplace, "
             "the `llmhyper refresh` code) on all impressions it logged. Greedy ranks by the posterior mean; "
             f"Thompson by one posterior sample per ad per request (compiled kernel, std x {w['sample_scale']:g}, "
             f"{w.get('sample_scale_how', 'given')}).",
             "", "Regret = expected clicks of the oracle top-k by true CTR minus expected clicks of what was shown.", "",
             "| policy | cumulative regret | per seed | regret / impression | cumulative clicks | CTR | "
             f"regret after step {max(1, cfg['steps'] // 3)} |",
             "|---|---|---|---|---|---|---|"]
    for p in POLICIES:
        r = s[p]
        per = ", ".join(f"{v:.1f}" for v in r["cum_regret"]["per_seed"])
        lines.append(f"| {p} | {_ms(r['cum_regret'])} | {per} | {_ms(r['regret_per_impression'], 4)} | "
                     f"{_ms(r['cum_clicks'])} | {_ms(r['ctr'], 4)} | {_ms(r['cum_regret_first_third'])} |")
    sv = ch["regret_saved_by_thompson"]
    lines += ["", f"Regret saved by Thompson (greedy - thompson, paired per seed): {_ms(sv)} "
              f"(per seed {', '.join(f'{v:.1f}' for v in sv['per_seed'])}). "
              f"Thompson lower on the mean: **{ch['thompson_regret_lower_mean']}**; on every seed: "
              f"{ch['thompson_regret_lower_every_seed']}.", ""]
    d = w.get("truth_diagnosis")
    if d:
        lines += [f"Prior spread against the truth (diagnosis, not used by either policy): logit error rms "
                  f"{d['logit_error_rms']:.3f}, prior logit std {d['prior_logit_sd_mean']:.3f}, "
                  f"z = error / std has std {d['z_std']:.3f} (1 = calibrated, < 1 = too wide)."
                  + (f" On retired ads (vs their trained weights) the same z std is "
                     f"{w['retired_calibration']['z_std']:.3f}." if w.get("retired_calibration") else ""), ""]
    lines += ["| step | " + " | ".join(f"{p} cum. regret | {p} cum. clicks" for p in POLICIES) + " |",
              "|---|" + "---|---|" * len(POLICIES)]
    T = cfg["steps"]
    for i in sorted({0, T // 4, T // 2, 3 * T // 4, T - 1}):
        cells = [f"{result['steps'][p]['cum_regret_mean'][i]:.1f} ± {result['steps'][p]['cum_regret_std'][i]:.1f} | "
                 f"{result['steps'][p]['cum_clicks_mean'][i]:.1f} ± {result['steps'][p]['cum_clicks_std'][i]:.1f}"
                 for p in POLICIES]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> str:
    """Cumulative regret and clicks against the step (mean ± std band); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("regret", "clicks"), ("cumulative regret (expected clicks)",
                                                            "cumulative clicks")):
        for p in POLICIES:
            m = np.array(result["steps"][p][f"cum_{key}_mean"])
            sd = np.array(result["steps"][p][f"cum_{key}_std"])
            x = np.arange(1, m.size + 1)
            ax.plot(x, m, label=p, lw=1.3)
            ax.fill_between(x, m - sd, m + sd, alpha=0.25)
        ax.set_xlabel(f"step ({result['config']['users_per_step']} requests each)")
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(f"{result['world']['dataset']}: simulated launch, mean ± std over {result['config']['seeds']} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_launch_reports(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write launch.md, launch.json and launch.png into ``out_dir`` (created)."""
    from offline.evaluation.report import save_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "launch.md"
    md.write_text(markdown(result))
    js = out / "launch.json"
    save_json(result, js)
    return [str(md), str(js), plot(result, out / "launch.png")]
