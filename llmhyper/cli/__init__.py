"""The ``llmhyper`` command line (:func:`main`); the command registry is :mod:`llmhyper.cli.registry`."""

import os

# Pin every numeric library to one thread BEFORE numpy/numba are imported (server
# processes use one core each; parallelism comes from processes). setdefault: an
# explicit environment setting still wins.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from llmhyper.cli.main import main  # noqa: E402

__all__ = ["main"]
