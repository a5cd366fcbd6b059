"""Ad images for multimodal prompts (paper appendix G): read, check, downscale, hash.

An ad's ``image_path`` is read once per generation, its type is taken from the file's magic
bytes (PNG, JPEG or WebP; anything else is refused), and an image larger than the limits
(``max_bytes`` bytes or ``max_side`` pixels on the longer side) is re-encoded smaller with
Pillow. Without Pillow an oversized image is an error rather than a silent upload of a huge
file. The sha256 of the bytes actually sent is part of every answer-cache key, so replacing the
image file invalidates the cached answers even when the path stays the same.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ImagePart", "ImageError", "load_image", "sniff_mime", "MAX_BYTES", "MAX_SIDE"]

MAX_BYTES = 4 * 1024 * 1024  # per image, after downscaling; providers cap inline data near this
MAX_SIDE = 1536  # pixels, longer side; larger images cost tokens without helping the model
_HARD_CAP = 64 * 1024 * 1024  # never read more than this from disk


class ImageError(ValueError):
    """The ad's image cannot be sent (missing, unreadable, unsupported type, too large)."""


@dataclass(frozen=True)
class ImagePart:
    """Image bytes ready to send: ``mime`` (image/png|jpeg|webp), ``data``, ``sha256`` of data,
    and whether it was downscaled from the file on disk."""

    mime: str
    data: bytes
    sha256: str
    downscaled: bool = False

    def b64(self) -> str:
        """Base64 text of the bytes (for data URLs)."""
        import base64

        return base64.b64encode(self.data).decode("ascii")


def sniff_mime(head: bytes) -> str | None:
    """The MIME type from a file's first bytes: PNG, JPEG or WebP; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _downscale(data: bytes, mime: str, max_bytes: int, max_side: int) -> tuple[bytes, str]:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with torchvision
        raise ImageError(f"image is over the limit ({len(data)} bytes / {max_side}px) and Pillow is not "
                         "installed to downscale it") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            img = im.copy()
    except Exception as e:  # corrupt file behind a valid magic number
        raise ImageError(f"image cannot be decoded: {type(e).__name__}: {e}") from None
    fmt, out_mime = ("PNG", "image/png") if mime == "image/png" else ("JPEG", "image/jpeg")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    side = min(max_side, max(img.size))
    for _ in range(12):  # shrink until under both limits
        w, h = img.size
        scale = min(1.0, side / max(w, h))
        cand = img.resize((max(1, int(w * scale)), max(1, int(h * scale)))) if scale < 1.0 else img
        buf = io.BytesIO()
        cand.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {"optimize": True}))
        out = buf.getvalue()
        if len(out) <= max_bytes:
            return out, out_mime
        side = max(16, int(side * 0.7))
    raise ImageError(f"image stays over {max_bytes} bytes even at {side}px")


def _too_big_in_pixels(data: bytes, max_side: int) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False  # cannot tell; the byte limit still applies
    try:
        with Image.open(io.BytesIO(data)) as im:
            return max(im.size) > max_side
    except Exception as e:
        raise ImageError(f"image cannot be decoded: {type(e).__name__}: {e}") from None


def load_image(path: str | Path, max_bytes: int = MAX_BYTES, max_side: int = MAX_SIDE) -> ImagePart:
    """Read and check one image (see the module docstring). Raises :class:`ImageError` naming the
    path when the file is missing, unreadable, of an unsupported type or cannot be made small enough."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > _HARD_CAP:
            raise ImageError(f"image {p} is {size} bytes, over the hard cap of {_HARD_CAP}")
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image {p} does not exist") from None
    except (IsADirectoryError, PermissionError, OSError) as e:
        raise ImageError(f"image {p} cannot be read: {type(e).__name__}: {e}") from None
    mime = sniff_mime(data[:16])
    if mime is None:
        raise ImageError(f"image {p} is not PNG, JPEG or WebP (first bytes {data[:8]!r})")
    downscaled = False
    try:
        if len(data) > max_bytes or _too_big_in_pixels(data, max_side):
            data, mime = _downscale(data, mime, max_bytes, max_side)
            downscaled = True
    except ImageError as e:
        raise ImageError(f"image {p}: {e}") from None
    return ImagePart(mime=mime, data=data, sha256=hashlib.sha256(data).hexdigest(), downscaled=downscaled)
