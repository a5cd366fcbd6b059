"""Adapters that turn public or generated data into the dataset layout (offline.data.dataset).

Import the submodules directly: ``offline.data.adapters.movielens`` (MovieLens 100K) and
``offline.data.adapters.synthetic`` (the generated demo world). Nothing heavy is imported here.
"""

import os
from pathlib import Path

# The shared checkout keeps MovieLens beside the repository (../shared/data/movielens-100k);
# LLMHYPER_MOVIELENS overrides it.
DEFAULT_MOVIELENS_PATH = os.environ.get(
    "LLMHYPER_MOVIELENS",
    str((Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "movielens-100k").resolve()),
)
