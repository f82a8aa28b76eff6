"""An indexed item's picture, for people to look at: thumbnails for the API and the UI.

The bytes are read from where the item came from (a file, or a member of a webdataset shard named
'shard.tar/member.jpg'), decoded by the indexer's decoder and re-encoded, so what is served is only
pixels, never the stored bytes (an SVG with a script, a polyglot file). Paths come from the index's
own metadata, never from a request. Tested through tests/test_api.py and tests/test_ui.py.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from indexing.decode import DecodeLimits, decode_image


def read_source_bytes(path: str) -> bytes:
    """The bytes an index item came from: a file, or a member of a webdataset shard
    ('shard.tar/member.jpg'). The path comes from the index's own metadata, not from the request."""
    p = Path(path)
    if p.is_file():
        return p.read_bytes()
    head, sep, member = path.partition(".tar/")
    if sep and Path(head + ".tar").is_file():
        with tarfile.open(head + ".tar", "r:") as tf:
            f = tf.extractfile(member)
            if f is not None:
                return f.read()
    raise FileNotFoundError(path)


def render_image(path: str, size: str, thumb_side: int) -> tuple[bytes, str]:
    """Decoded with the indexer's safe decoder and re-encoded: the response is never the stored bytes
    (an SVG with a script, a polyglot file), only pixels."""
    data = read_source_bytes(path)
    limits = DecodeLimits(max_side=thumb_side if size == "thumb" else 4096)
    image = decode_image(data, name=path, limits=limits).image
    buf = io.BytesIO()
    if size == "thumb":
        image.save(buf, format="JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"
    image.save(buf, format="PNG")
    return buf.getvalue(), "image/png"
