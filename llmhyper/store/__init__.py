"""The versioned LMDB weight store (:mod:`llmhyper.store.weight_store`) and its input checks."""

from llmhyper.store.weight_store import (  # noqa: F401  (the package's public API)
    StoreError,
    UserNotFound,
    VersionNotFound,
    WeightStore,
)
