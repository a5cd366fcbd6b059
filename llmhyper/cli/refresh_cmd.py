"""``llmhyper refresh``: update the served cold ads' weights from their logs and publish a version.

The prior of every ad is the generated version it descends from (a refreshed version stores
it as the ``prior`` array and names it in ``manifest.refresh.prior_version``), so a refresh
always fits ALL logs since launch against the generated weights: refreshing twice with the
same logs gives the same weights, and nothing is counted twice. The new version carries
``sigma`` (posterior std, float32 [M, F], the spread Thompson exploration samples from) and a
``prior`` array and per-ad provenance under
each record's ``refresh`` key (clicks and impressions seen, prior vs data weight, spread).
Under implicit negatives, a version whose manifest has ``click_delay_quantiles`` (seconds after
launch, measured on retired ads) weighs each non-click by the share of clicks that have
arrived by then (offline/warm/logs.py). Everything is checked first and published in one store transaction: a malformed log exits 2
naming the line and publishes nothing; a refresh killed mid-way leaves the serving version.

Examples::

    llmhyper refresh --store S --logs interactions.csv --prior-scale 0.5
    llmhyper refresh --store S --logs logs.csv --policy switch --min-clicks 10
    llmhyper refresh --store S --logs logs.csv --policy none --until 2026-12-01T00:00:00Z
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Any

from llmhyper.cli.common import add_json, open_store, print_json
from llmhyper.cli.registry import CLIError, RuntimeFailure, command

POLICIES = ("prior", "switch", "none")


def check_policy_args(policy: str, min_clicks: int | None, prior_scale: float | None) -> None:
    """Raise CLIError naming a wrong combination of policy options."""
    if policy not in POLICIES:
        raise CLIError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "switch" and min_clicks is None:
        raise CLIError("--policy switch needs --min-clicks N")
    if policy != "switch" and min_clicks is not None:
        raise CLIError(f"--min-clicks applies to --policy switch only (got --policy {policy})")
    if min_clicks is not None and min_clicks < 1:
        raise CLIError(f"--min-clicks must be >= 1, got {min_clicks}")
    if prior_scale is not None and not (math.isfinite(prior_scale) and prior_scale > 0):
        raise CLIError(f"--prior-scale must be a finite number > 0, got {prior_scale}")


def load_base(store: Any, base: str | None) -> dict[str, Any]:
    """The version to refresh and the generated prior it descends from: view, prior mu [M, F]
    float32, prior version id, prior records (without any earlier ``refresh`` key)."""
    import numpy as np

    from llmhyper.store.weight_store import VersionNotFound

    try:
        view = store.view(base)
    except VersionNotFound as e:
        raise CLIError(str(e)) from None
    ref = view.manifest.get("refresh")
    if ref:
        mu = store.version_array(view.version, "prior")
        if mu is None:
            raise CLIError(f"version {view.version} is a refresh but stores no 'prior' array")
        prior_version = ref.get("prior_version", view.version)
    else:
        mu = np.array(view.theta, dtype=np.float32)
        prior_version = view.version
    records = []
    for a in view.ad_ids:
        rec = store.ad_record(view.version, a) or {}
        rec.pop("refresh", None)
        records.append(rec)
    return {"view": view, "mu": np.ascontiguousarray(mu, dtype=np.float32), "prior_version": prior_version,
            "records": records}


def refresh_store(store: Any, logs: Any, X: Any, *, policy: str = "prior", min_clicks: int | None = None,
                  prior_scale: float | None = None, intercept_scale: float | None = None, laplace: str = "diag", until: float = math.inf,
                  implicit: bool | None = None, base: str | None = None, l2: float | None = None,
                  launched: Any = None, ads_csv: str | None = None,
                  loaded: dict[str, Any] | None = None, theta0: Any = None) -> tuple[str, dict]:
    """Refresh ``base`` (default: the current version) of ``store`` with ``logs`` and publish.

    logs: offline.warm.logs.Logs whose ``ad`` indexes the base version's rows and ``user``
    the rows of X [U, F] (the logged users' features). Options default from the version's
    manifest (``implicit_negatives``, ``prior_scale``, ``l2``); launch times from the per-ad
    records' ``launched_at`` (else ``ads_csv``). Returns (new version id, manifest.refresh).
    """
    import numpy as np

    from offline.warm.logs import delay_cdf, launch_times, window_counts
    from offline.warm.policies import prior_from_records, refresh_weights

    check_policy_args(policy, min_clicks, prior_scale)
    b = loaded or load_base(store, base)
    view = b["view"]
    man = view.manifest
    prev = man.get("refresh") or {}
    if implicit is None:
        implicit = man.get("implicit_negatives", prev.get("implicit_negatives"))
        if implicit is None:
            raise CLIError(f"version {view.version} does not say whether its logs have implicit negatives; "
                           "pass --negatives implicit|logged")
    if prior_scale is None:
        prior_scale = prev.get("prior_scale", man.get("prior_scale"))
        if prior_scale is None:
            raise CLIError(f"version {view.version} records no prior_scale; pass --prior-scale S "
                           "(llmhyper replay chooses one on retired ads)")
    l2 = float(l2 if l2 is not None else man.get("l2") or 1.0)
    if launched is None:
        launched = launch_times(b["records"], view.ad_ids, ads_csv)
    if intercept_scale is None:
        intercept_scale = prev.get("prior_scale_intercept", man.get("prior_scale_intercept", prior_scale))
    prior = prior_from_records(b["mu"], b["records"], float(prior_scale), float(intercept_scale))
    quant = man.get("click_delay_quantiles")
    cdf = delay_cdf(quant) if implicit and quant else None
    trials, clicks = window_counts(logs, X.shape[0], launched, until, bool(implicit), cdf)
    res = refresh_weights(policy, prior, np.asarray(X), trials, clicks, min_clicks=min_clicks, l2=l2,
                          laplace=laplace, theta0=theta0)
    summary = {"policy": policy, "min_clicks": min_clicks, "prior_version": b["prior_version"],
               "base_version": view.version, "prior_scale": float(prior_scale),
               "prior_scale_intercept": float(intercept_scale), "laplace": laplace,
               "implicit_negatives": bool(implicit), "until": None if math.isinf(until) else float(until),
               "l2": l2, "delay_weighted": cdf is not None, "log_rows": int((logs.ts < until).sum()), "n_updated": int(sum(r["updated"] for r in res.records)),
               "clicks": int(clicks.sum()), "refreshed_at": time.time()}
    manifest = {k: v for k, v in man.items() if k not in ("created_at", "refresh")}
    manifest["refresh"] = summary
    records = {a: {**rec, "launched_at": float(launched[i]), "refresh": res.records[i]}
               for i, (a, rec) in enumerate(zip(view.ad_ids, b["records"]))}
    from llmhyper.store.weight_store import InvalidWeights, PublishError

    try:
        version = store.publish(list(view.ad_ids), res.theta, [list(f) for f in view.features], manifest=manifest,
                                ad_records=records, sigma=res.sigma, arrays={"prior": b["mu"]})
    except InvalidWeights as e:
        raise CLIError(f"refresh produced weights the store refuses, nothing published: {e}") from None
    except PublishError as e:
        raise RuntimeFailure(f"publish failed (the previous version still serves): {e}") from None
    return version, summary


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="LMDB weight store (its current version is refreshed)")
    p.add_argument("--logs", required=True, help="interactions.csv of the served ads (user_id, ad_id, clicked, timestamp)")
    p.add_argument("--policy", default="prior", help="prior (default: MAP with the generated weights as prior), "
                   "switch (hard switch to a trained LR at --min-clicks), none (keep the generated weights)")
    p.add_argument("--min-clicks", type=int, default=None, help="clicks an ad needs before --policy switch trains it")
    p.add_argument("--prior-scale", type=float, default=None,
                   help="global prior std (logits) where the generator recorded no sample spread "
                        "(default: the version's recorded prior_scale)")
    p.add_argument("--intercept-scale", type=float, default=None,
                   help="prior std of the intercept (default: the version's prior_scale_intercept, else --prior-scale)")
    p.add_argument("--laplace", choices=("diag", "full"), default="diag",
                   help="posterior spread: mean-field 1/sqrt(diag H) or marginal sqrt(diag H^-1)")
    p.add_argument("--until", default=None, help="use logs before this time only (unix seconds or ISO-8601)")
    p.add_argument("--negatives", choices=("implicit", "logged"), default=None,
                   help="implicit: the logs list clicks only; logged: impressions with outcomes "
                        "(default: the version's implicit_negatives)")
    p.add_argument("--base", default=None, help="version to refresh (default: current)")
    p.add_argument("--ads", default=None, help="ads.csv with launched_at, for ads whose record has none")
    p.add_argument("--l2", type=float, default=None, help="L2 of the switch policy's regression (default: manifest l2)")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    from llmhyper.store.weight_store import UserNotFound
    from offline.data.dataset import parse_time
    from offline.warm.logs import LogError, launch_times, read_logs

    check_policy_args(args.policy, args.min_clicks, args.prior_scale)
    if args.intercept_scale is not None and not (math.isfinite(args.intercept_scale) and args.intercept_scale > 0):
        raise CLIError(f"--intercept-scale must be a finite number > 0, got {args.intercept_scale}")
    until = math.inf
    if args.until is not None:
        try:
            until = parse_time(args.until)
        except ValueError:
            raise CLIError(f"--until: unparseable time {args.until!r}") from None
    store = open_store(args.store, readonly=False)
    try:
        b = load_base(store, args.base)
        view = b["view"]
        implicit = None if args.negatives is None else args.negatives == "implicit"
        if implicit is None:
            implicit = view.manifest.get("implicit_negatives", (view.manifest.get("refresh") or {}).get("implicit_negatives"))
        if implicit is None:
            raise CLIError(f"version {view.version} does not say whether its logs have implicit negatives; "
                           "pass --negatives implicit|logged")
        try:
            launched = launch_times(b["records"], view.ad_ids, args.ads)
            logs = read_logs(args.logs, view.ad_index, launched, bool(implicit))
        except LogError as e:
            raise CLIError(f"{e}; nothing published") from None
        try:
            X = store.user_matrix(logs.user_ids)
        except UserNotFound as e:
            uid = e.user_id
            line = next((int(logs.line[i]) for i in range(logs.n) if logs.user_ids[logs.user[i]] == uid), None)
            raise CLIError(f"{args.logs} line {line}: unknown user_id {uid!r} (not in the store's user table); "
                           "nothing published") from None
        uf = store.user_features()
        if uf is None or [n for n, _ in uf] != list(view.feature_names):
            raise CLIError("the store's user table does not have the served version's feature schema")
        version, summary = refresh_store(store, logs, X, policy=args.policy, min_clicks=args.min_clicks,
                                         prior_scale=args.prior_scale, intercept_scale=args.intercept_scale,
                                         laplace=args.laplace, until=until,
                                         implicit=bool(implicit), l2=args.l2, launched=launched, loaded=b)
    finally:
        store.close()
    summary["version"] = version
    if args.json:
        print_json(summary)
    else:
        print(f"published {version}: policy {summary['policy']}, {summary['n_updated']} of {len(view.ad_ids)} ads "
              f"updated from {summary['log_rows']} log rows ({summary['clicks']} clicks); prior {summary['prior_version']}")
    return 0


HELP = "update cold ads' weights from their logs (generated weights as prior) and publish a version"
command("refresh", HELP, configure=configure)(run)
