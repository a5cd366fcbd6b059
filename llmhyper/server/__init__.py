"""The Ranker gRPC server: the servicer (:mod:`.servicer`), its lifecycle (:mod:`.app`) and config."""

from llmhyper.server.app import RankerServer, create_server, serve  # noqa: F401

__all__ = ["RankerServer", "create_server", "serve"]
