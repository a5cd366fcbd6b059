"""The serving half of the offline evaluation: a real store, real kernels, a real gRPC server."""

from llmhyper.evaluation.store_serving import StoreServing

__all__ = ["StoreServing"]
