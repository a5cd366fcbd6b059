"""A small generated ads world with a known ground truth, for ``llmhyper demo`` and fast tests.

Six product categories, each with templated, readable titles, descriptions and image captions.
Users carry interest scores per category plus demographics and activity. Every ad's true
weight vector is its category's prototype plus a little per-ad noise, so ads that read alike
(same category) also target alike: text neighbours are informative, as the paper assumes.
Clicks are sampled from the true logistic model after each ad's launch time, which is spread
over ~180 days so a time split yields both warm and cold ads.
"""

from __future__ import annotations

import numpy as np

from offline.data.dataset import Ad, Dataset
from offline.data.features import BIAS_DESCRIPTION, BIAS_NAME

DAY = 86400.0
T0 = 1_700_000_000.0  # 2023-11-14, start of the synthetic calendar (unix seconds)

# category -> (brands, products, adjectives, benefit phrases, caption scenes)
CATEGORIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "sports gear": (
        ("TrailPro", "Apex Athletics", "Stride"),
        ("running shoes", "yoga mat", "cycling helmet", "hiking backpack", "tennis racket", "dumbbell set"),
        ("lightweight", "durable", "breathable", "pro-grade"),
        ("for faster training sessions", "built for long trail days", "to lift your weekend workout"),
        ("on a rocky mountain trail", "in a bright gym", "beside a running track at sunrise"),
    ),
    "kitchen": (
        ("HearthCo", "Copper & Oak", "ChefLine"),
        ("cast-iron skillet", "chef's knife", "espresso machine", "stand mixer", "non-stick pan set", "cutting board"),
        ("professional", "easy-clean", "heirloom", "compact"),
        ("for weeknight dinners", "that makes baking simple", "for the home barista"),
        ("on a marble countertop", "in a sunlit farmhouse kitchen", "next to fresh vegetables"),
    ),
    "toys": (
        ("BrightBlocks", "Tinker Town", "PlayNest"),
        ("building blocks set", "plush bear", "remote-control car", "wooden train set", "puzzle box", "art kit"),
        ("colourful", "safe", "educational", "award-winning"),
        ("for curious kids aged 3 and up", "that sparks creativity", "for family game night"),
        ("on a playroom rug with a smiling child", "in a toy box full of colours", "on a kids' table"),
    ),
    "travel": (
        ("Wayfarer", "BlueHorizon", "Nomad Air"),
        ("weekend city break", "beach resort package", "carry-on suitcase", "rail pass", "ski chalet stay", "cruise deal"),
        ("all-inclusive", "last-minute", "flexible", "premium"),
        ("to escape the routine", "with free cancellation", "for your next long weekend"),
        ("over a turquoise beach at sunset", "in front of a snowy alpine village", "under an airport departure board"),
    ),
    "books": (
        ("Inkwell Press", "Pageturner", "Lantern Books"),
        ("mystery novel", "history book", "cookbook", "science fiction saga", "biography", "poetry collection"),
        ("bestselling", "new", "illustrated", "acclaimed"),
        ("you will not put down", "for quiet evenings", "from a debut author"),
        ("lying open on a wooden desk", "stacked with hardcovers by a window", "held by a reader in an armchair"),
    ),
    "beauty": (
        ("Lumiere", "Bloom & Co", "PureGlow"),
        ("face serum", "matte lipstick", "hair oil", "night cream", "perfume", "sunscreen"),
        ("vegan", "dermatologist-tested", "long-lasting", "fragrance-free"),
        ("for radiant skin", "that lasts all day", "for a daily self-care ritual"),
        ("against a pastel background", "on a vanity with soft lighting", "held by a model with glowing skin"),
    ),
}
CATEGORY_NAMES = tuple(CATEGORIES)

# Extra user features beyond the category interests, with their true category dependence.
_EXTRA = (
    ("age_under_30", "1 if the user is younger than 30, else 0."),
    ("age_50_plus", "1 if the user is 50 or older, else 0."),
    ("activity", "Log-scaled number of sessions in the last 30 days, standardised (mean 0, sd 1)."),
    ("has_children", "1 if the user's household includes children, else 0."),
    ("frequent_traveller", "1 if the user took 3 or more trips last year, else 0."),
)
# Per category: (base logit, weight on own interest, age_under_30, age_50_plus, activity,
#               has_children, frequent_traveller)
_PROTO = {
    "sports gear": (-3.2, 3.0, 0.6, -0.5, 0.4, 0.0, 0.1),
    "kitchen": (-3.4, 2.6, -0.4, 0.4, 0.1, 0.3, 0.0),
    "toys": (-3.8, 2.2, -0.3, -0.2, 0.0, 1.6, 0.0),
    "travel": (-3.5, 2.4, 0.2, 0.3, 0.2, -0.2, 1.2),
    "books": (-3.3, 2.8, -0.2, 0.6, -0.1, 0.0, 0.1),
    "beauty": (-3.4, 2.7, 0.5, -0.2, 0.2, 0.0, 0.0),
}
_MIN_FEATURES = 1 + len(CATEGORY_NAMES)
_MAX_FEATURES = 1 + len(CATEGORY_NAMES) + len(_EXTRA)


def synthetic_features(n_features: int = 12) -> list[tuple[str, str]]:
    """The first ``n_features`` features of the synthetic world (7 to 12)."""
    if not _MIN_FEATURES <= n_features <= _MAX_FEATURES:
        raise ValueError(f"n_features must be in [{_MIN_FEATURES}, {_MAX_FEATURES}], got {n_features}")
    feats = [(BIAS_NAME, BIAS_DESCRIPTION)]
    for c in CATEGORY_NAMES:
        feats.append((f"interest_{c.replace(' ', '_')}",
                      f"User's interest in {c} (0 to 1) from past browsing of that category."))
    feats.extend(_EXTRA)
    return feats[:n_features]


def make_synthetic(n_ads: int = 200, n_users: int = 2000, n_features: int = 12, seed: int = 0,
                   implicit: bool = True, impression_rate: float = 0.3) -> tuple[Dataset, np.ndarray]:
    """Generate a dataset and its ground-truth weights ``theta`` float32 [n_ads, n_features].

    implicit=True: every (user, ad) pair is drawn from the true model and only clicks are logged
    (implicit negatives). implicit=False: each user sees a random ``impression_rate`` share of
    the ads and every impression is logged with its 0/1 outcome. Deterministic per seed.
    """
    if n_ads < 1 or n_users < 1:
        raise ValueError(f"need n_ads >= 1 and n_users >= 1, got {n_ads}, {n_users}")
    if not 0.0 < impression_rate <= 1.0:
        raise ValueError(f"impression_rate must be in (0, 1], got {impression_rate}")
    feats = synthetic_features(n_features)
    F = len(feats)
    rng = np.random.default_rng(seed)
    C = len(CATEGORY_NAMES)

    # users
    favourite = rng.integers(0, C, n_users)
    interest = rng.beta(1.2, 4.0, size=(n_users, C))
    interest[np.arange(n_users), favourite] = rng.beta(5.0, 2.0, n_users)
    age = rng.integers(18, 75, n_users)
    full = np.column_stack([
        np.ones(n_users), interest,
        (age < 30).astype(float), (age >= 50).astype(float),
        rng.standard_normal(n_users),
        (rng.random(n_users) < 0.35).astype(float),
        (rng.random(n_users) < 0.2).astype(float),
    ])
    X = np.ascontiguousarray(full[:, :F], dtype=np.float32)

    # ads and true weights
    cat = rng.integers(0, C, n_ads)
    theta = np.zeros((n_ads, _MAX_FEATURES))
    for i, c in enumerate(cat):
        base, own, *extra = _PROTO[CATEGORY_NAMES[c]]
        theta[i, 0] = base
        theta[i, 1:1 + C] = -0.3
        theta[i, 1 + c] = own
        theta[i, 1 + C:] = extra
    theta += rng.normal(0.0, 0.15, theta.shape)
    theta = np.ascontiguousarray(theta[:, :F], dtype=np.float32)

    launched = T0 + np.sort(rng.uniform(0.0, 180.0, n_ads)) * DAY
    launched = np.round(launched)
    ads: list[Ad] = []
    for i, c in enumerate(cat):
        name = CATEGORY_NAMES[c]
        brands, products, adjs, benefits, scenes = CATEGORIES[name]
        b, p, a = brands[rng.integers(len(brands))], products[rng.integers(len(products))], adjs[rng.integers(len(adjs))]
        ben, scene = benefits[rng.integers(len(benefits))], scenes[rng.integers(len(scenes))]
        ads.append(Ad(
            ad_id=f"ad{i:04d}",
            title=f"{b} {a.capitalize()} {p.title()}",
            description=f"The {a} {p} from {b}, {ben}. A {name} pick with free returns.",
            image_path=None,
            image_caption=f"A photo of a {p} {scene}.",
            category=name,
            launched_at=float(launched[i]),
        ))

    # interactions, sampled from the true model
    P = 1.0 / (1.0 + np.exp(-(X.astype(np.float64) @ theta.T.astype(np.float64))))  # [N, A]
    clicks = rng.random(P.shape) < P
    if implicit:
        u, a = np.nonzero(clicks)
        c = np.ones(u.size, dtype=np.int8)
    else:
        shown = rng.random(P.shape) < impression_rate
        u, a = np.nonzero(shown)
        c = clicks[u, a].astype(np.int8)
    ts = launched[a] + np.round(rng.exponential(7.0 * DAY, u.size))
    order = np.lexsort((u, ts))
    ds = Dataset(
        name=f"synthetic-{seed}",
        ads=ads,
        user_ids=[f"u{n:05d}" for n in range(n_users)],
        X=X, features=feats,
        inter_user=u[order], inter_ad=a[order], inter_clicked=c[order], inter_ts=ts[order],
        implicit=implicit,
        description=(f"Generated world (seed {seed}): {n_ads} ads in {C} categories, {n_users} users; "
                     "clicks sampled from known per-ad logistic weights driven by the category."),
        meta={"generator": "offline.data.adapters.synthetic", "seed": seed},
    )
    return ds, theta
