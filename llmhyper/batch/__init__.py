"""Batch scoring of user lists (``llmhyper score``): input reading, the job, its outputs.

* :mod:`llmhyper.batch.inputs`: Parquet / CSV / JSON Lines user lists read in chunks of a
  fixed number of rows (by id, or by feature columns named as in the version's schema);
* :mod:`llmhyper.batch.scorers`: where a chunk is scored: the local memory-mapped store
  (``--store``) or a server fleet through ``RankBatch`` (``--target``);
* :mod:`llmhyper.batch.output`: a chunk's result as an Arrow table (long or wide);
* :mod:`llmhyper.batch.job`: the resumable job: one Parquet part per chunk, a manifest
  recording the arguments and the parts, the final file assembled from the parts;
* :mod:`llmhyper.batch.dask_run`: the same parts scored on a Dask cluster.

Errors in the caller's input raise :class:`BatchInputError` (the CLI exits 2); failures of
the environment raise :class:`BatchRuntimeError` (exit 1).
"""
from __future__ import annotations


class BatchInputError(Exception):
    """Bad input: a malformed or missing file, an unknown column or id, different arguments."""


class BatchRuntimeError(Exception):
    """A failure that is not the caller's input (unreachable server, cluster lost)."""


__all__ = ["BatchInputError", "BatchRuntimeError"]
