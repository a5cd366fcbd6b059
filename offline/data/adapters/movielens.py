"""MovieLens 100K as an ads data set (movies play the role of ads).

Protocol (docs/EVALUATION.md):

- click: user u rated movie r (any rating); every other (u, r) pair is a non-click, so the
  produced dataset has ``implicit_negatives = true``.
- an ad is a movie: ``title`` from u.item (Latin-1); ``description`` from release year and
  genres; ``image_caption``: MovieLens has no images, so a short caption-like text is DERIVED
  from the genres (declared in dataset.json); ``category`` = first listed genre
  (``unknown`` if none); ``launched_at`` = the movie's first rating time (unix seconds).
- time split: T = 70th percentile (numpy linear interpolation) of all 1,682 movies' first-rating
  times. Retired (warm) = first rated before T with >= 5 ratings; active (cold) = first rated
  at/after T with >= 5 ratings. Movies with < 5 ratings are left out of the produced dataset
  (they are neither warm nor cold). T is stored in dataset.json as ``time_split.cutoff`` so the
  split survives the exclusion.
- user features (intercept first) are computed from ratings of RETIRED movies only, so no
  label of an active movie can leak into a feature: age buckets, gender, occupation, the share
  of the user's retired-movie ratings in each genre, log(1 + #retired ratings), has-history.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from offline.data.cache import file_sha256
from offline.data.dataset import Ad, Dataset, DatasetError
from offline.data.writer import save_dataset
from offline.errors import InputError
from offline.data.features import BIAS_DESCRIPTION, BIAS_NAME

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western")
# MovieLens-1M style age bands: (lower bound inclusive, upper bound exclusive, label)
AGE_BUCKETS = ((0, 18, "under_18", "under 18"), (18, 25, "18_24", "18 to 24"), (25, 35, "25_34", "25 to 34"),
               (35, 45, "35_44", "35 to 44"), (45, 50, "45_49", "45 to 49"), (50, 56, "50_55", "50 to 55"),
               (56, 200, "56_plus", "56 or older"))
QUANTILE = 0.7
MIN_RATINGS = 5
REQUIRED_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.occupation")


class MovieLensNotFound(InputError, FileNotFoundError):
    """The MovieLens 100K directory (or one of its files) is missing."""


def _slug(s: str) -> str:
    return "".join(ch.lower() if ch.isalnum() else "_" for ch in s).strip("_").replace("__", "_")


def verify_checksums(path: str | os.PathLike) -> None:
    """Check every file listed in SHA256SUMS; DatasetError naming the first mismatch."""
    root = Path(path)
    sums = root / "SHA256SUMS"
    if not sums.is_file():
        raise DatasetError(f"MovieLens: no SHA256SUMS in {root} (pass verify=False to skip)")
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*").strip()
        f = root / name
        if not f.is_file():
            raise MovieLensNotFound(f"MovieLens: {f} listed in SHA256SUMS is missing")
        got = file_sha256(f)
        if got != digest:
            raise DatasetError(f"MovieLens: checksum mismatch for {name}: expected {digest}, got {got}")


def _read_lines(path: Path) -> list[list[str]]:
    with open(path, encoding="latin-1") as f:
        return [ln.rstrip("\r\n").split("|") for ln in f if ln.strip()]


def load_movielens(path: str | os.PathLike, verify: bool = True, feature_cutoff: float | None = None) -> Dataset:
    """Build the MovieLens 100K dataset from the raw files in ``path``.

    ``feature_cutoff`` (unix s, optional; for pseudo-cold validation): user features then use
    only ratings of retired movies first rated before ``min(T, feature_cutoff)``, so retired
    movies launched later can play cold ads without their ratings shaping the features. The
    split itself (retired/active, T) is unchanged. None (default) = all retired movies.

    Returns a Dataset with implicit negatives, movies with >= 5 ratings as ads, all users, and
    ``meta["time_split"] = {"cutoff": T, "quantile": 0.7, "min_interactions": 5}``.
    ``verify`` checks SHA256SUMS first. Raises MovieLensNotFound when the data is absent.
    """
    root = Path(path)
    if not root.is_dir():
        raise MovieLensNotFound(f"MovieLens 100K not found at {root} (expected u.data, u.item, u.user, ...)")
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            raise MovieLensNotFound(f"MovieLens 100K: missing {root / name}")
    if verify:
        verify_checksums(root)

    genres = [r[0] for r in _read_lines(root / "u.genre")]
    if tuple(genres) != GENRES:
        raise DatasetError(f"MovieLens: unexpected genre list in u.genre: {genres}")
    occupations = [r[0].strip() for r in _read_lines(root / "u.occupation")]

    # movies
    items = _read_lines(root / "u.item")
    movie_ids = np.array([int(r[0]) for r in items], dtype=np.int64)
    titles = [r[1].strip() for r in items]
    dates = [r[2].strip() for r in items]
    G = np.array([[int(x) for x in r[5:5 + len(GENRES)]] for r in items], dtype=np.int8)  # [M, 19]
    if G.shape[1] != len(GENRES):
        raise DatasetError("MovieLens: u.item rows lack the 19 genre flags")
    mpos = {int(m): i for i, m in enumerate(movie_ids)}

    # users
    urows = _read_lines(root / "u.user")
    user_nums = np.array([int(r[0]) for r in urows], dtype=np.int64)
    upos = {int(u): i for i, u in enumerate(user_nums)}
    N, M = len(urows), len(items)

    # ratings: user, item, rating, timestamp (tab separated)
    raw = np.loadtxt(root / "u.data", dtype=np.int64, ndmin=2)
    if raw.shape[1] != 4:
        raise DatasetError("MovieLens: u.data must have 4 columns (user item rating timestamp)")
    try:
        r_user = np.array([upos[int(u)] for u in raw[:, 0]], dtype=np.int64)
        r_item = np.array([mpos[int(m)] for m in raw[:, 1]], dtype=np.int64)
    except KeyError as e:
        raise DatasetError(f"MovieLens: u.data refers to unknown id {e.args[0]}") from None
    r_ts = raw[:, 3].astype(np.float64)

    n_ratings = np.bincount(r_item, minlength=M)
    first = np.full(M, np.inf)
    np.minimum.at(first, r_item, r_ts)
    rated = np.isfinite(first)
    T = float(np.quantile(first[rated], QUANTILE))
    retired = rated & (first < T) & (n_ratings >= MIN_RATINGS)
    active = rated & (first >= T) & (n_ratings >= MIN_RATINGS)
    kept = retired | active

    # user features, from retired-movie ratings only
    feat_movies = retired if feature_cutoff is None else retired & (first < float(feature_cutoff))
    on_retired = feat_movies[r_item]
    R = np.zeros((N, M), dtype=np.float64)
    R[r_user[on_retired], r_item[on_retired]] = 1.0
    n_hist = R.sum(axis=1)
    genre_counts = R @ G.astype(np.float64)  # [N, 19]
    shares = np.divide(genre_counts, n_hist[:, None], out=np.zeros_like(genre_counts), where=n_hist[:, None] > 0)

    feats: list[tuple[str, str]] = [(BIAS_NAME, BIAS_DESCRIPTION)]
    cols: list[np.ndarray] = [np.ones(N)]
    ages = np.array([int(r[1]) for r in urows])
    for lo, hi, slug, words in AGE_BUCKETS:
        feats.append((f"age_{slug}", f"1 if the user's age is {words}, else 0."))
        cols.append(((ages >= lo) & (ages < hi)).astype(np.float64))
    gender = np.array([r[2].strip() for r in urows])
    feats.append(("gender_female", "1 if the user reported gender female, 0 if male."))
    cols.append((gender == "F").astype(np.float64))
    occ = np.array([r[3].strip() for r in urows])
    for o in occupations:
        feats.append((f"occ_{_slug(o)}", f"1 if the user's occupation is '{o}', else 0."))
        cols.append((occ == o).astype(np.float64))
    for g, gname in enumerate(GENRES):
        feats.append((f"genre_share_{_slug(gname)}",
                      f"Share (0 to 1) of the user's past movie ratings that went to {gname} movies; 0 without history."))
        cols.append(shares[:, g])
    feats.append(("log_history", "log(1 + number of past movies the user rated); 0 without history."))
    cols.append(np.log1p(n_hist))
    feats.append(("has_history", "1 if the user rated at least one past movie, else 0."))
    cols.append((n_hist > 0).astype(np.float64))
    X = np.ascontiguousarray(np.stack(cols, axis=1), dtype=np.float32)

    # ads
    genre_words = [g.lower() if g not in ("Sci-Fi", "Film-Noir") else g for g in GENRES]
    keep_idx = np.flatnonzero(kept)
    new_pos = np.full(M, -1, dtype=np.int64)
    new_pos[keep_idx] = np.arange(keep_idx.size)
    ads: list[Ad] = []
    for m in keep_idx:
        gs = [GENRES[g] for g in np.flatnonzero(G[m])]
        year = dates[m][-4:] if len(dates[m]) >= 4 and dates[m][-4:].isdigit() else ""
        when = f"A {year} film" if year else "A film (release year unknown)"
        desc = f"{when}. Genres: {', '.join(gs) if gs else 'unknown'}."
        words = [genre_words[g] for g in np.flatnonzero(G[m])] or ["unlabelled"]
        caption = "Poster for " + (" / ".join(words)) + " movie"
        ads.append(Ad(ad_id=str(int(movie_ids[m])), title=titles[m], description=desc, image_path=None,
                      image_caption=caption, category=gs[0] if gs else "unknown", launched_at=float(first[m])))

    on_kept = kept[r_item]
    order = np.lexsort((r_user[on_kept], r_ts[on_kept]))  # chronological, stable
    inter_user = r_user[on_kept][order]
    inter_ad = new_pos[r_item[on_kept]][order]
    inter_ts = r_ts[on_kept][order]

    description = (
        "MovieLens 100K (GroupLens) as an ads data set: movies are ads, a rating is a click, every "
        "unrated (user, movie) pair is a non-click. Movies with fewer than 5 ratings are excluded. "
        "launched_at is each movie's first rating time. image_caption is DERIVED from the genres "
        "(MovieLens has no images). User features use ratings of retired movies only (first rated "
        "before time_split.cutoff, >= 5 ratings).")
    meta = {
        "time_split": {"cutoff": T, "quantile": QUANTILE, "min_interactions": MIN_RATINGS},
        **({"feature_cutoff": float(feature_cutoff)} if feature_cutoff is not None else {}),
        "source": {"name": "movielens-100k", "checksums_verified": bool(verify)},
        "derived": {"image_caption": "built from the genres; no image exists",
                    "description": "built from release year and genres",
                    "launched_at": "first rating time of the movie"},
        "counts": {"movies_total": int(M), "movies_retired": int(retired.sum()),
                   "movies_active": int(active.sum()), "movies_excluded_lt5": int((~kept).sum())},
    }
    return Dataset(name="movielens-100k", ads=ads, user_ids=[str(int(u)) for u in user_nums], X=X,
                   features=feats, inter_user=inter_user, inter_ad=inter_ad,
                   inter_clicked=np.ones(inter_user.size, dtype=np.int8), inter_ts=inter_ts,
                   implicit=True, description=description, meta=meta)


def convert_movielens(src: str | os.PathLike, dst: str | os.PathLike, verify: bool = True) -> Path:
    """Convert raw MovieLens 100K in ``src`` into the dataset layout in directory ``dst``."""
    return save_dataset(load_movielens(src, verify=verify), dst)
