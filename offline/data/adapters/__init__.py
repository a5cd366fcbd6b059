"""Adapters that turn public or generated data into the dataset layout (offline.data.dataset).

Import the submodules directly: ``offline.data.adapters.movielens`` (MovieLens 100K) and
``offline.data.adapters.synthetic`` (the generated demo world). Nothing heavy is imported here.
"""

import os
from pathlib import Path

# Where MovieLens 100K is looked for, first hit wins: $LLMHYPER_MOVIELENS; a ``shared/data``
# folder beside the repository or beside any folder above it (the workplace keeps it in
# ../shared); this machine's shared copy. When none exists the first candidate is reported.
_REL = Path("shared") / "data" / "movielens-100k"
_WORKPLACE_COPY = Path("/work") / _REL


def _candidates() -> list[Path]:
    repo = Path(__file__).resolve().parents[3]
    return [parent / _REL for parent in (repo.parent, *repo.parent.parents)] + [_WORKPLACE_COPY]


def _default_movielens_path() -> str:
    env = os.environ.get("LLMHYPER_MOVIELENS")
    if env:
        return env
    found = next((c for c in _candidates() if (c / "u.data").is_file()), None)
    return str(found or _candidates()[0])


DEFAULT_MOVIELENS_PATH = _default_movielens_path()
