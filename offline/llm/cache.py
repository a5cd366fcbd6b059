"""On-disk cache of validated LLM answers: one JSON file per key, written atomically.

A killed job leaves only complete entries (tmp file + rename), so a restart reuses every answer
that was validated before the kill and repeats no call for it. Keys are sha256 digests of
everything the answer depends on (see :func:`answer_key`); entries are re-validated on read.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

from offline.data.cache import atomic_write_bytes, content_hash

log = logging.getLogger(__name__)


def ad_content_hash(ad: Any) -> str:
    """sha256 of the ad's content fields (title, description, image caption, category, image path)."""
    return content_hash(
        "ad-content-v1",
        str(getattr(ad, "title", "") or ""),
        str(getattr(ad, "description", "") or ""),
        str(getattr(ad, "image_caption", "") or ""),
        str(getattr(ad, "category", "") or ""),
        str(getattr(ad, "image_path", "") or ""),
    )


def answer_key(
    *,
    ad_hash: str,
    batch_names: Sequence[str],
    prompt_version: str,
    model: str,
    sample: int,
    neighbour_ids: Sequence[str],
    prompt_sha: str,
    seed: int | None = None,
) -> str:
    """Cache key of one sample answer: sha256 over the ad content hash, the batch's feature
    names, the prompt version, the model fingerprint (backend, model, temperature), the sample
    index, the sampling seed sent to the model (None: no seed), the shown neighbours' ids and
    the hash of the exact prompt text."""
    return content_hash(
        "llm-answer-v2",
        ad_hash,
        json.dumps(list(batch_names), ensure_ascii=False),
        prompt_version,
        model,
        str(int(sample)),
        json.dumps(list(neighbour_ids), ensure_ascii=False),
        prompt_sha,
        "none" if seed is None else str(int(seed)),
    )


class AnswerCache:
    """Key -> JSON record store. ``cache_dir=None`` keeps entries in memory only (no resume)."""

    def __init__(self, cache_dir: str | Path | None) -> None:
        self.dir = Path(cache_dir) if cache_dir is not None else None
        self._mem: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored record or None (a missing or unreadable entry is a miss)."""
        with self._lock:
            if key in self._mem:
                return self._mem[key]
        if self.dir is None:
            return None
        p = self._path(key)
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable cache entry %s: %s", p, e)
            return None
        with self._lock:
            self._mem[key] = rec
        return rec

    def put(self, key: str, record: dict) -> None:
        """Store a record; on disk it is complete or absent, never partial."""
        data = json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")
        if self.dir is not None:
            atomic_write_bytes(self._path(key), data)
        with self._lock:
            self._mem[key] = record

    def keys_on_disk(self) -> list[str]:
        """Every key stored on disk (for tests and reports)."""
        if self.dir is None:
            return []
        return sorted(p.stem for p in self.dir.glob("*/*.json"))
