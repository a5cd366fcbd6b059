"""Interaction logs of served cold ads (the dataset layout's ``interactions.csv`` form) and the
per-ad training counts a refresh fits on.

A log is checked whole before anything is fitted: an unknown ad, a timestamp before the ad's
launch, a duplicate row, ``clicked`` not 0/1 (or 0 under implicit negatives), an unparseable
timestamp or a missing column raises :class:`LogError` naming the file, line and value.

Training counts (:func:`window_counts`) for the logs before a time ``until``:

- logged impressions (``implicit=False``): trials[u, a] = impressions of ad a shown to user u,
  clicks[u, a] = how many of them were clicked;
- implicit negatives (``implicit=True``, logs list clicks only): user u counts as one trial of
  ad a when u was active on another of these ads at or after a's launch and before ``until``
  (activity that is only the click on a itself would admit every clicker but only the busy
  non-clickers); clicks[u, a] = 1 when such a user clicked a. A user not seen since a's launch is
  no evidence either way. Clicks arrive with a delay after launch, so a non-click of a young ad
  is mostly "not yet": with a click-delay distribution F (:func:`delay_cdf`, measured on
  retired ads) a non-click counts as F(until - launch) of a trial, a click as one. Under
  p(click by t) = p F(t) this keeps the fitted rate near the lifetime rate p (exact as p -> 0),
  which is what the generated weights predict.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from offline.data.dataset import INTERACTION_COLUMNS, parse_time
from offline.errors import InputError


class LogError(InputError):
    """A malformed interaction log; the message names the file, line and value."""


@dataclass
class Logs:
    """Validated logs. user: int32 [E] index into ``user_ids`` (distinct ids, first-seen order);
    ad: int32 [E] index into the served version's ad ids; clicked: int8 [E]; ts: float64 [E]
    unix seconds; line: int64 [E] CSV line numbers (1 = header), for error messages."""

    user_ids: list[str]
    user: np.ndarray
    ad: np.ndarray
    clicked: np.ndarray
    ts: np.ndarray
    line: np.ndarray

    @property
    def n(self) -> int:
        return int(self.user.size)

    def before(self, until: float) -> "Logs":
        """The rows with ts < ``until`` (user ids unchanged)."""
        k = self.ts < until
        return Logs(self.user_ids, self.user[k], self.ad[k], self.clicked[k], self.ts[k], self.line[k])


def from_arrays(user_ids: Sequence[str], user: np.ndarray, ad: np.ndarray, clicked: np.ndarray,
                ts: np.ndarray) -> Logs:
    """Logs from in-memory arrays (already valid, e.g. a Dataset's interactions); lines are row + 2."""
    E = len(user)
    return Logs(list(user_ids), np.asarray(user, np.int32), np.asarray(ad, np.int32),
                np.asarray(clicked, np.int8), np.asarray(ts, np.float64), np.arange(2, E + 2, dtype=np.int64))


def read_logs(path: str | os.PathLike, ad_index: Mapping[str, int], launched: np.ndarray,
              implicit: bool) -> Logs:
    """Read and check an interactions CSV of the served ads.

    ad_index: ad id -> row of the served version; launched: float64 [M] launch times (unix s)
    of those rows; implicit: True when the log lists clicks only. Raises LogError.
    """
    p = Path(path)
    if not p.is_file():
        raise LogError(f"logs file not found: {p}")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise LogError(f"{p.name}: empty file (no header row)") from None
        missing = [c for c in INTERACTION_COLUMNS if c not in header]
        if missing:
            raise LogError(f"{p.name}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
        ci = {c: header.index(c) for c in INTERACTION_COLUMNS}
        width = len(header)
        users: dict[str, int] = {}
        seen: dict[tuple[int, int, float], int] = {}
        rows_u, rows_a, rows_c, rows_t, rows_l = [], [], [], [], []
        for lineno, r in enumerate(reader, start=2):
            if not r:
                continue
            if len(r) != width:
                raise LogError(f"{p.name} line {lineno}: {len(r)} fields, header has {width}")
            uid, aid = r[ci["user_id"]].strip(), r[ci["ad_id"]].strip()
            if not uid:
                raise LogError(f"{p.name} line {lineno}: empty user_id")
            a = ad_index.get(aid)
            if a is None:
                raise LogError(f"{p.name} line {lineno}: unknown ad_id {aid!r} (not in the served version)")
            c = r[ci["clicked"]].strip()
            if c not in ("0", "1"):
                raise LogError(f"{p.name} line {lineno}: clicked must be 0 or 1, got {c!r}")
            if implicit and c == "0":
                raise LogError(f"{p.name} line {lineno}: clicked = 0 but the logs have implicit negatives "
                               "(list clicks only)")
            raw_t = r[ci["timestamp"]]
            try:
                t = parse_time(raw_t)
            except ValueError:
                raise LogError(f"{p.name} line {lineno}: unparseable timestamp {raw_t!r}") from None
            if t < launched[a]:
                raise LogError(f"{p.name} line {lineno}: timestamp {raw_t.strip()} is before ad {aid!r} "
                               f"launched ({launched[a]:.0f})")
            u = users.setdefault(uid, len(users))
            key = (u, a, t)
            if key in seen:
                raise LogError(f"{p.name} line {lineno}: duplicate row (same user_id {uid!r}, ad_id {aid!r} "
                               f"and timestamp as line {seen[key]})")
            seen[key] = lineno
            rows_u.append(u)
            rows_a.append(a)
            rows_c.append(int(c))
            rows_t.append(t)
            rows_l.append(lineno)
    return Logs(list(users), np.array(rows_u, np.int32), np.array(rows_a, np.int32), np.array(rows_c, np.int8),
                np.array(rows_t, np.float64), np.array(rows_l, np.int64))


def delay_quantiles(delays: np.ndarray, n: int = 101) -> list[float]:
    """``n`` evenly spaced quantiles (seconds) of click delays after launch (>= 0), for :func:`delay_cdf`."""
    d = np.asarray(delays, dtype=np.float64)
    d = d[np.isfinite(d) & (d >= 0)]
    if d.size == 0:
        raise ValueError("no click delays to build a delay distribution from")
    return [float(v) for v in np.quantile(d, np.linspace(0.0, 1.0, n))]


def delay_cdf(quantiles: Sequence[float]):
    """F(elapsed seconds) -> share of clicks that have arrived, from :func:`delay_quantiles`
    (piecewise linear; 0 at or before launch, 1 beyond the last quantile)."""
    q = np.maximum.accumulate(np.asarray(quantiles, dtype=np.float64))
    levels = np.linspace(0.0, 1.0, q.size)

    def F(elapsed: np.ndarray) -> np.ndarray:
        e = np.asarray(elapsed, dtype=np.float64)
        return np.where(e <= 0, 0.0, np.interp(e, q, levels, left=0.0, right=1.0))

    return F


def counts_between(logs: Logs, n_users: int, start: np.ndarray, end: np.ndarray,
                   implicit: bool, cdf=None, other: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(trials, clicks), float64 [n_users, M], from the rows with start[a] <= ts < end[a].

    Logged impressions: trials = impressions of ad a to user u in its window, clicks = clicked
    ones. Implicit negatives: trials[u, a] = 1 when u logged a row with another ad inside a's
    window (``other=False``: any row, the click on a included), clicks[u, a] = 1 when such a
    user clicked a inside it; ``cdf`` weighs the non-clicks (module doc). ``logs.ad`` may hold
    -1 for rows of ads outside the M columns (they count as activity only).
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    M = start.size
    trials = np.zeros((n_users, M))
    clicks = np.zeros((n_users, M))
    mine = logs.ad >= 0
    a = logs.ad[mine].astype(np.int64)
    inwin = (logs.ts[mine] >= start[a]) & (logs.ts[mine] < end[a])
    u, a, c = logs.user[mine][inwin], a[inwin], logs.clicked[mine][inwin].astype(np.float64)
    if not implicit:
        np.add.at(trials, (u, a), 1.0)
        np.add.at(clicks, (u, a), c)
        return trials, clicks
    clicks[u, a] = 1.0
    # any row of user u in [start_a, end_a): count rows below each bound in (user, ts) order
    span = 4.0 * max(1.0, float(np.abs(logs.ts).max(initial=0.0)), float(np.abs(end[np.isfinite(end)]).max(initial=0.0)))
    keys = np.sort(logs.user.astype(np.float64) * span + logs.ts)
    base = np.arange(n_users, dtype=np.float64)[:, None] * span
    hi = np.searchsorted(keys, base + np.minimum(end, span / 2)[None, :], side="left")
    lo = np.searchsorted(keys, base + np.maximum(start, -span / 2)[None, :], side="left")
    # a user is a trial of ad a when active on ANOTHER ad in a's window: activity that is only
    # the click on a itself would admit every clicker but only the busy non-clickers
    own = np.zeros((n_users, M))
    if other:
        np.add.at(own, (u, a), 1.0)
    trials[:] = (hi - lo - own) > 0
    clicks *= trials
    if cdf is not None:  # a non-click of a young ad is mostly "not yet" (module doc)
        w = cdf(np.minimum(end, span / 2) - start)
        trials = np.where(clicks > 0, 1.0, trials * w[None, :])
    return trials, clicks


def window_counts(logs: Logs, n_users: int, launched: np.ndarray, until: float,
                  implicit: bool, cdf=None) -> tuple[np.ndarray, np.ndarray]:
    """(trials, clicks), float64 [n_users, M], from each ad's launch up to ``until`` (module
    doc); ``cdf``: the click-delay distribution that weighs implicit non-clicks (None: 1)."""
    return counts_between(logs, n_users, launched, np.full(launched.size, float(until)), implicit, cdf)


def launch_times(records: Sequence[Mapping | None], ad_ids: Sequence[str],
                 ads_csv: str | os.PathLike | None = None) -> np.ndarray:
    """float64 [M] launch times of the served ads: each record's ``launched_at`` if present,
    else the ``launched_at`` column of ``ads_csv`` (dataset layout). Raises LogError naming
    the first ad without one."""
    out = np.full(len(ad_ids), np.nan)
    for i, rec in enumerate(records):
        if rec and rec.get("launched_at") is not None:
            out[i] = float(rec["launched_at"])
    if np.isnan(out).any() and ads_csv is not None:
        p = Path(ads_csv)
        if not p.is_file():
            raise LogError(f"ads file not found: {p}")
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        by_id = {r.get("ad_id", "").strip(): r.get("launched_at", "") for r in rows}
        for i, aid in enumerate(ad_ids):
            if np.isnan(out[i]) and aid in by_id:
                try:
                    out[i] = parse_time(by_id[aid])
                except ValueError:
                    raise LogError(f"{p.name}: unparseable launched_at {by_id[aid]!r} for ad {aid!r}") from None
    if np.isnan(out).any():
        aid = ad_ids[int(np.flatnonzero(np.isnan(out))[0])]
        raise LogError(f"launch time of ad {aid!r} unknown: its record has no launched_at; pass --ads ads.csv")
    return out
