"""Helpers shared by the test modules: a seeded synthetic world and its publish, CLI runs,
polling, TLS material, and a small LLM catalog. Fixtures stay in conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class World:
    """A small seeded ranking world: M ads x F features, N users."""

    ad_ids: list[str]
    theta: np.ndarray          # float32 [M, F]
    features: list[tuple[str, str]]
    user_ids: list[str]
    X: np.ndarray              # float32 [N, F], column 0 = 1.0
    ad_records: dict[str, dict]
    manifest: dict

    @property
    def M(self) -> int:
        return self.theta.shape[0]

    @property
    def F(self) -> int:
        return self.theta.shape[1]

    def x(self, user_id: str) -> np.ndarray:
        return self.X[self.user_ids.index(user_id)]


def make_world(seed: int = 7, M: int = 40, F: int = 8, N: int = 30, scale: float = 1.0) -> World:
    """Seeded synthetic weights, users, schema, per-ad records and manifest."""
    rng = np.random.default_rng(seed)
    names = ["bias"] + [f"f{j}" for j in range(1, F)]
    features = [("bias", "intercept, always 1.0")] + [(n, f"synthetic feature {n} in [0, 1]") for n in names[1:]]
    theta = (rng.normal(0.0, 1.0, size=(M, F)) * scale).astype(np.float32)
    X = rng.random((N, F), dtype=np.float32)
    X[:, 0] = 1.0
    ad_ids = [f"ad{i:03d}" for i in range(M)]
    user_ids = [f"u{i:03d}" for i in range(N)]
    records = {
        a: {"rationale": {"f1": f"{a} appeals to f1", "bias": "base rate"}, "alpha": 0.05, "delta": -0.5,
            "neighbours": [[ad_ids[(i + 1) % M], 0.9]]}
        for i, a in enumerate(ad_ids[: M // 2])
    }
    manifest = {"generator": "test-synthetic", "model": "none", "prompt_version": "t0", "seed": seed}
    return World(ad_ids, np.ascontiguousarray(theta), features, user_ids, np.ascontiguousarray(X), records, manifest)


def publish_world(store, world: World, with_users: bool = True) -> str:
    version = store.publish(world.ad_ids, world.theta, world.features, manifest=world.manifest,
                            ad_records=world.ad_records)
    if with_users:
        store.put_users(world.user_ids, world.X, world.features)
    return version


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` s; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LLMHYPER_TOKEN", None)
    env.pop("LLMHYPER_TARGET", None)
    return env


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``python -m llmhyper ARGS`` in a subprocess; returns the completed process (text)."""
    return subprocess.run([sys.executable, "-m", "llmhyper", *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path          # a CA that signed nothing here
    rogue_client_cert: Path  # client cert signed by other_ca
    rogue_client_key: Path


def make_tls_files(d: Path) -> TLSFiles:
    """Self-signed CA, a server cert for localhost/127.0.0.1, a client cert, and a rogue client cert."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str):
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(k.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(k, hashes.SHA256()))
        return k, cert

    def leaf(cn: str, ca_key, ca_cert, server: bool):
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject).public_key(k.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    def write(path: Path, k=None, cert=None) -> Path:
        if k is not None:
            path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        else:
            path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key, ca_cert = ca("llmhyper test CA")
    other_key, other_cert = ca("some other CA")
    sk, sc = leaf("localhost", ca_key, ca_cert, server=True)
    ck, cc = leaf("test client", ca_key, ca_cert, server=False)
    rk, rc = leaf("rogue client", other_key, other_cert, server=False)
    return TLSFiles(
        ca=write(d / "ca.pem", cert=ca_cert), server_cert=write(d / "server.pem", cert=sc),
        server_key=write(d / "server.key", k=sk), client_cert=write(d / "client.pem", cert=cc),
        client_key=write(d / "client.key", k=ck), other_ca=write(d / "other-ca.pem", cert=other_cert),
        rogue_client_cert=write(d / "rogue.pem", cert=rc), rogue_client_key=write(d / "rogue.key", k=rk),
    )


# A small LLM catalog: cold ads with warm neighbours (random trained weights), deterministic.
FEATS = [("bias", "intercept: 1 for every user")] + [(f"f{i}", f"engagement with topic {i}") for i in range(1, 11)]
SMALL = FEATS[:5]  # bias + 4 features: one batch of 4


def make_catalog(n_ads=4, k=5, F=None, seed=0):
    """Cold ads and their neighbours (warm ads with random trained weights), deterministic."""
    from offline.data.dataset import Ad
    from offline.types import Neighbour

    F = len(FEATS) if F is None else F
    rng = np.random.default_rng(seed)
    ads, nbs = [], []
    for i in range(n_ads):
        ads.append(Ad(f"cold{i}", f"Cold ad number {i}", f"Description {i}", None, f"caption {i}", "toys", 0.0))
        nbs.append([
            Neighbour(Ad(f"warm{i}_{j}", f"Warm ad {i}-{j}", "", None, f"warm caption {j}", "toys"),
                      rng.normal(0, 0.8, F).astype(np.float32), round(0.95 - 0.1 * j - 0.01 * i, 4))
            for j in range(k)
        ])
    return ads, nbs
