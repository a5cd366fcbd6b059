"""What a load test does: :class:`LoadSpec`, a pydantic model checked before any process starts.

Every field is named after its command-line option (``batch_size`` is ``--batch-size``), so a
validation error can name the option the caller has to fix (:func:`option_error`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["METHODS", "LoadSpec", "option_error"]

METHODS = ("Rank", "RankBatch", "Explain")
DEFAULT_BATCH_SIZE = 16
DEFAULT_DURATION_S = 10.0


class LoadSpec(BaseModel):
    """One load test against one server.

    Load shape: exactly one of ``rate`` (open loop: calls are sent on a fixed schedule,
    ``rate`` calls/s summed over all processes, whatever the server's answers take) or
    ``concurrency`` (closed loop: that many callers in all, each sending its next call when
    the previous one answered). Length: ``calls`` measured calls or ``duration`` seconds
    (default 10 s when neither is given). ``warmup`` seconds of the same load run first and
    are not measured.

    Attributes:
        target: server "HOST:PORT".
        method: "Rank", "RankBatch" or "Explain".
        rate: open-loop calls per second (all processes together).
        concurrency: closed-loop callers (all processes together; at least ``procs``).
        procs: load-generator processes. connections: gRPC channels (TCP connections) per process.
        max_inflight: open loop: sender threads per process, the most calls one process has in flight.
        duration: seconds of measured load. calls: measured calls. warmup: seconds, not measured.
        timeout: per-call deadline in seconds. top_k: ads asked per user.
        batch_size: users per RankBatch call. ad: ad id explained by Explain.
        send: "id" (requests name the user) or "features" (requests carry the feature vector).
        tls_ca / tls_cert / tls_key / tls_server_name: TLS settings (PEM paths); None: plaintext.
        token: bearer token sent on every call.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=3)
    method: Literal["Rank", "RankBatch", "Explain"] = "Rank"
    rate: float | None = Field(default=None, gt=0, le=1_000_000)
    concurrency: int | None = Field(default=None, ge=1, le=100_000)
    procs: int = Field(default=1, ge=1, le=256)
    connections: int = Field(default=1, ge=1, le=1024)
    max_inflight: int = Field(default=64, ge=1, le=10_000)
    duration: float | None = Field(default=None, gt=0)
    calls: int | None = Field(default=None, ge=1)
    warmup: float = Field(default=0.0, ge=0)
    timeout: float = Field(default=10.0, gt=0, le=3600)
    top_k: int = Field(default=10, ge=1)
    batch_size: int | None = Field(default=None, ge=1, le=1_000_000)
    ad: str | None = None
    send: Literal["id", "features"] = "id"
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LoadSpec:
        host, sep, port = self.target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--target must be HOST:PORT, got {self.target!r}")
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give exactly one of --rate R (open loop, calls/s) or --concurrency C (closed loop)")
        if self.duration is not None and self.calls is not None:
            raise ValueError("give --duration S or --calls N, not both")
        if self.concurrency is not None and self.concurrency < self.procs:
            raise ValueError(f"--concurrency ({self.concurrency}) must be at least --procs ({self.procs}): "
                             "every process needs one caller")
        if self.batch_size is not None and self.method != "RankBatch":
            raise ValueError(f"--batch-size applies only to --method RankBatch, not {self.method}")
        if self.ad is not None and self.method != "Explain":
            raise ValueError(f"--ad applies only to --method Explain, not {self.method}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key must be given together")
        return self

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def batch(self) -> int:
        """Users per call: ``batch_size`` for RankBatch (default 16), else 1."""
        if self.method != "RankBatch":
            return 1
        return self.batch_size or DEFAULT_BATCH_SIZE

    @property
    def seconds(self) -> float | None:
        """Measured seconds when the test is bounded by time (None when bounded by ``calls``)."""
        if self.calls is not None:
            return None
        return self.duration if self.duration is not None else DEFAULT_DURATION_S

    @property
    def tls(self) -> bool:
        return any(v is not None for v in (self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name))


def option_error(err: ValidationError) -> str:
    """One line naming the option at fault for a :class:`LoadSpec` validation error."""
    parts = []
    for e in err.errors():
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        loc = [str(x) for x in e.get("loc", ()) if isinstance(x, str)]
        if loc:
            opt = "--" + loc[0].replace("_", "-")
            parts.append(f"{opt}: {msg} (got {e.get('input')!r})")
        else:
            parts.append(msg)
    return "; ".join(parts)
