"""Images of a table sent inline: local paths and fsspec URLs (``s3://``...) as ``data:`` URLs.

Vision models take ``image_url`` content parts whose URL is either one the service fetches
(``https://``) or the image itself, base64-encoded (``data:image/png;base64,...``: Together's
"local images" form). A batch input file holds at most 100 MB, so an image is refused before
it is read when its encoded form could not fit a request, or when it is over the template's
``max_image_bytes``; the message names the row.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Mapping
from typing import Any

from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.requests.rules import MAX_BATCH_BYTES
from dagster_together.storage import filesystem

# Room left in a request for its text and JSON around the image.
_REQUEST_SLACK = 64 * 1024
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def encoded_size(n_bytes: int, mime: str) -> int:
    """Length of the ``data:`` URL of an image of ``n_bytes``."""
    return len(f"data:{mime};base64,") + 4 * ((n_bytes + 2) // 3)


class ImageInliner:
    """Turns image locations into URLs for ``image_url`` parts, inlining what is not remote."""

    def __init__(self, storage_options: Mapping[str, Any] | None, max_image_bytes: int | None):
        self.storage_options = storage_options
        self.max_image_bytes = max_image_bytes

    def url(self, location: str, where: str) -> str:
        if location.startswith(("http://", "https://", "data:")):
            return location
        fs, path = filesystem(location, self.storage_options)
        try:
            size = int(fs.size(path))
        except (FileNotFoundError, OSError):
            raise InvalidRequestFileError(
                f"{where}: the image {location!r} does not exist or cannot be read."
            ) from None
        if self.max_image_bytes is not None and size > self.max_image_bytes:
            raise InvalidRequestFileError(
                f"{where}: the image {location!r} is {size:,} bytes, over max_image_bytes="
                f"{self.max_image_bytes:,}; resize it or send it by URL."
            )
        guess = mimetypes.guess_type(path)[0]
        if encoded_size(size, guess or "image/jpeg") > MAX_BATCH_BYTES - _REQUEST_SLACK:
            raise InvalidRequestFileError(
                f"{where}: the image {location!r} is {size:,} bytes; base64-encoded it would make "
                f"the request larger than a batch input file may be ({MAX_BATCH_BYTES:,} bytes). "
                "Resize it or send it by URL."
            )
        with fs.open(path, "rb") as handle:
            data = handle.read()
        mime = _mime(data, guess)
        if mime is None:
            raise InvalidRequestFileError(
                f"{where}: {location!r} is not an image (PNG, JPEG, GIF or WebP); check the "
                "image column."
            )
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _mime(data: bytes, guess: str | None) -> str | None:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if guess is not None and guess.startswith("image/"):
        return guess
    return None
