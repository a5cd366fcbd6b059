"""Ad images reach the model as bytes (Gemini inline data through the real google-genai client,
OpenAI base64 data URLs over httpx), change the cache key, are downscaled above the limit, and
a missing or bad image fails only its ad."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from offline.generators.job import generate_all
from offline.generators.llm import LLMGenerator
from offline.llm.gemini import GeminiBackend
from offline.llm.images import ImageError, load_image, sniff_mime
from offline.llm.openai_compat import OpenAICompatBackend

from tests.fakes.llm_server import FakeLLMServer
from tests.helpers import SMALL, make_catalog


def png(path, size=(8, 6), colour=(200, 10, 10)):
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def with_image(ad, path):
    return dataclasses.replace(ad, image_path=str(path))


def gen(backend, cache, **kw):
    kw.setdefault("n_samples", 1)
    kw.setdefault("batch_size", 4)
    return LLMGenerator(backend, cache_dir=cache, sleep=lambda s: None, **kw)


@pytest.fixture()
def server():
    with FakeLLMServer() as s:
        yield s


def test_gemini_sends_inline_image_bytes_and_the_hash_is_in_the_cache_key(server, tmp_path):
    be = GeminiBackend("gemini-fake", api_key="k", base_url=server.base_url, timeout_s=20)
    ads, nbs = make_catalog(1, F=len(SMALL))
    img = png(tmp_path / "ad.png")
    ad = with_image(ads[0], img)
    g = gen(be, tmp_path / "c").generate(ad, nbs[0], SMALL)
    assert g.failed is None and server.calls_by_route["gemini"] == 1
    req = server.requests[-1]
    assert req["images"] == [("image/png", img.read_bytes())]  # the exact file bytes arrived
    assert "caption 0" in req["user"]  # the caption is still sent beside the image
    # same bytes: answered from the cache; new bytes at the same path: asked again
    server.reset_counters()
    gen(be, tmp_path / "c").generate(ad, nbs[0], SMALL)
    assert server.calls_by_route["gemini"] == 0
    png(img, colour=(10, 200, 10))
    gen(be, tmp_path / "c").generate(ad, nbs[0], SMALL)
    assert server.calls_by_route["gemini"] == 1 and server.requests[-1]["images"][0][1] == img.read_bytes()
    # images switched off: no image part, and a different cache entry from the image run
    server.reset_counters()
    gen(be, tmp_path / "c", images=False).generate(ad, nbs[0], SMALL)
    assert server.calls_by_route["gemini"] == 1 and server.requests[-1]["images"] == []


def test_openai_sends_a_base64_data_url(server, tmp_path):
    be = OpenAICompatBackend(server.openai_base_url, "local", timeout_s=20)
    ads, nbs = make_catalog(1, F=len(SMALL))
    Image.new("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "a.jpg", format="JPEG")
    g = gen(be, tmp_path / "c").generate(with_image(ads[0], tmp_path / "a.jpg"), nbs[0], SMALL)
    assert g.failed is None
    req = server.requests[-1]
    parts = req["body"]["messages"][1]["content"]
    assert parts[0]["type"] == "text" and parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert req["images"] == [("image/jpeg", (tmp_path / "a.jpg").read_bytes())]


def test_an_oversized_image_is_downscaled_before_sending(server, tmp_path):
    be = GeminiBackend("gemini-fake", api_key="k", base_url=server.base_url, timeout_s=20)
    ads, nbs = make_catalog(1, F=len(SMALL))
    big = png(tmp_path / "big.png", size=(300, 120))
    g = gen(be, tmp_path / "c", image_max_side=64).generate(with_image(ads[0], big), nbs[0], SMALL)
    assert g.failed is None and "image:downscaled" in g.flags
    mime, data = server.requests[-1]["images"][0]
    with Image.open(io.BytesIO(data)) as im:
        assert mime == "image/png" and im.size == (64, 25)
    part = load_image(big, max_bytes=2048, max_side=4096)  # byte limit alone also triggers it
    noisy = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    small = load_image(tmp_path / "noisy.png", max_bytes=20_000, max_side=4096)
    assert small.downscaled and len(small.data) <= 20_000 and sniff_mime(small.data[:16]) == "image/png"
    assert not part.downscaled or len(part.data) <= 2048


def test_missing_or_bad_image_fails_only_that_ad(server, tmp_path):
    be = GeminiBackend("gemini-fake", api_key="k", base_url=server.base_url, timeout_s=20)
    ads, nbs = make_catalog(3, F=len(SMALL))
    (tmp_path / "not-an-image.png").write_text("hello")
    ads = [with_image(ads[0], tmp_path / "missing.png"), with_image(ads[1], tmp_path / "not-an-image.png"), ads[2]]
    res = generate_all(gen(be, tmp_path / "c"), ads, nbs, SMALL, progress=False)
    assert res[0].failed.startswith("image:") and "does not exist" in res[0].failed
    assert "not PNG, JPEG or WebP" in res[1].failed
    assert np.all(np.isnan(res[0].theta)) and res[2].failed is None and np.all(np.isfinite(res[2].theta))
    assert server.calls_by_route["gemini"] == 1  # no call was made for the two failed ads
    fb = gen(be, tmp_path / "c", on_failure="knn").generate(ads[0], nbs[0], SMALL)
    assert fb.fallback == "knn-raw" and np.all(np.isfinite(fb.theta))
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.webp")
