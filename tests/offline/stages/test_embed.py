"""Embedders: text composition, bundled MiniLM, open_clip (random tiny model, image + text,
local checkpoint), and the content-hash disk cache."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from offline.data.adapters.synthetic import make_synthetic
from offline.data.dataset import Ad
from offline.stages.embed import CachedEmbedder, MiniLMEmbedder, OpenClipEmbedder, ad_text

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

TINY = "LLMHyperTinyTestCLIP"


class CountingEmbedder:
    """Test-side wrapper that counts how many ads reach the real encoder."""

    def __init__(self, inner):
        self.inner, self.name, self.calls, self.ads_seen = inner, inner.name, 0, 0

    @property
    def dim(self):
        return self.inner.dim

    def content(self, ad):
        return self.inner.content(ad)

    def embed_ads(self, ads):
        self.calls += 1
        self.ads_seen += len(ads)
        return self.inner.embed_ads(ads)


@pytest.fixture(scope="module")
def ads():
    ds, _ = make_synthetic(n_ads=10, n_users=20, seed=3)
    return ds.ads


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder()


def test_ad_text():
    ad = Ad("x", "  Trail  Shoes ", "Light shoes for runners.", None, "Shoes on a rock.", "sports gear", 0.0)
    assert ad_text(ad) == "Trail Shoes. Category: sports gear. Light shoes for runners. Image: Shoes on a rock."
    assert ad_text(ad, use_caption=False) == "Trail Shoes. Category: sports gear. Light shoes for runners."
    assert ad_text(replace(ad, category="", description="")) == "Trail Shoes. Image: Shoes on a rock."


def test_minilm_embeds_unit_rows_and_groups_categories(minilm, ads):
    emb = minilm.embed_ads(ads)
    assert emb.shape == (10, 384) and emb.dtype == np.float32 and minilm.dim == 384
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    again = minilm.embed_ads(ads[::-1])
    assert np.allclose(again[::-1], emb, atol=1e-5)
    sim = emb @ emb.T
    cats = np.array([a.category for a in ads])
    same = (cats[:, None] == cats[None, :]) & ~np.eye(10, dtype=bool)
    assert same.any() and sim[same].mean() > sim[cats[:, None] != cats[None, :]].mean() + 0.05
    assert minilm.name != MiniLMEmbedder(use_caption=False).name


def test_cache_serves_second_call_from_disk(tmp_path, minilm, ads):
    counted = CountingEmbedder(minilm)
    cache = CachedEmbedder(counted, tmp_path / "emb")
    first = cache.embed_ads(ads)
    assert counted.ads_seen == 10 and cache.misses == 10
    fresh = CachedEmbedder(counted, tmp_path / "emb")  # a new process would see the same files
    second = fresh.embed_ads(ads)
    assert counted.calls == 1 and fresh.hits == 10 and fresh.misses == 0
    assert np.array_equal(first, second) and second.dtype == np.float32
    edited = list(ads)
    edited[4] = replace(ads[4], title=ads[4].title + " XL")
    fresh.embed_ads(edited)
    assert counted.calls == 2 and counted.ads_seen == 11  # only the edited ad is recomputed
    no_caption = CachedEmbedder(CountingEmbedder(MiniLMEmbedder(use_caption=False)), tmp_path / "emb")
    no_caption.embed_ads(ads[:2])
    assert no_caption.misses == 2  # another embedder name never hits these entries
    assert len(list((tmp_path / "emb").rglob("*.npy"))) == 13
    twin = replace(ads[0], ad_id="twin1", title="Same text")
    twins = [twin, replace(twin, ad_id="twin2")]
    out = fresh.embed_ads(twins)
    assert counted.ads_seen == 12 and np.array_equal(out[0], out[1])  # identical content embedded once


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clipcfg")
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / f"{TINY}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / f"{TINY}.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=None)
    ckpt = d / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return model.eval(), preprocess, ckpt


def _png(path, seed):
    from PIL import Image

    arr = (np.random.default_rng(seed).random((24, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


def test_open_clip_text_and_image_from_checkpoint(tmp_path, tiny_clip, ads):
    model, preprocess, ckpt = tiny_clip
    from PIL import Image

    with_img = [replace(ads[0], image_path=_png(tmp_path / "a.png", 1)), ads[1],
                replace(ads[2], image_path=_png(tmp_path / "b.png", 2))]
    e1 = OpenClipEmbedder(TINY, pretrained=str(ckpt))
    e2 = OpenClipEmbedder(TINY, pretrained=str(ckpt))
    assert e1.name == e2.name and "sha256:" in e1.name and e1.dim == 32
    v1, v2 = e1.embed_ads(with_img), e2.embed_ads(with_img)
    assert v1.shape == (3, 32) and np.allclose(np.linalg.norm(v1, axis=1), 1, atol=1e-5)
    assert np.allclose(v1, v2, atol=1e-6)

    # plain twin: normalise(normalise(text) + normalise(image)), text only without an image
    tok = open_clip.get_tokenizer(TINY)([ad_text(a) for a in with_img])
    with torch.no_grad():
        t = torch.nn.functional.normalize(model.encode_text(tok), dim=-1).numpy()
        imgs = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in (tmp_path / "a.png", tmp_path / "b.png")])
        im = torch.nn.functional.normalize(model.encode_image(imgs), dim=-1).numpy()
    want = t.copy()
    want[[0, 2]] += im
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(v1, want, atol=1e-5)
    assert not np.allclose(v1[0], t[0], atol=1e-3)  # the image really contributes

    # the cache key follows the image bytes
    key_before = CachedEmbedder(e1, tmp_path / "c").key(with_img[0])
    _png(tmp_path / "a.png", 99)
    assert CachedEmbedder(e1, tmp_path / "c").key(with_img[0]) != key_before


def test_open_clip_errors(tmp_path, tiny_clip, ads):
    with pytest.raises(ValueError, match="checkpoint not found"):
        OpenClipEmbedder(TINY, pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="open_clip could not load 'NoSuchClipModel'"):
        OpenClipEmbedder("NoSuchClipModel").embed_ads(ads[:1])
    e = OpenClipEmbedder(TINY, pretrained=None)
    assert "random-init" in e.name
    with pytest.raises(ValueError, match="image_path does not exist"):
        e.embed_ads([replace(ads[0], image_path=str(tmp_path / "nope.png"))])
