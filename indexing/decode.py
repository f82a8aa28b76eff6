"""Decode: untrusted image bytes → one 8-bit RGB picture, or a `DecodeError` with a reason.

Crawled corpora hold every kind of file that can sit behind an image URL: palette GIFs, 16-bit
greyscale PNGs, CMYK JPEGs from print workflows, phone photos stored sideways with an EXIF
rotation, SVG icons, HTML error pages saved as .jpg, half-downloaded files and the odd
decompression bomb. The encoders want one thing, an RGB image, so every branch ends there, and
every failure ends as a `DecodeError` whose `reason` is a short token that the reject tables can
count (`REASONS`). One bad file must never stop a million-image job, so no decoder exception
escapes as itself.

Choices worth knowing:
- Transparency is composited onto `DecodeLimits.background`, white by default. Icons, logos and
  clip-art are drawn for light pages; dropping the alpha channel (what a bare `convert("RGB")`
  does) shows whatever colour the transparent pixels happen to hold, usually black, and dark
  line-art on black vanishes.
- The pixel count is read from the header and checked before any pixel is decoded, so a small file
  that claims 100000×100000 is refused without allocating. Large JPEGs are decoded at a reduced
  scale by libjpeg itself (`Image.draft`) and then resized, so a 20-megapixel photo costs about as
  much as a 1-megapixel one. `Decoded.width/height` still report the original size.
- Truncated files are refused rather than half-decoded (a grey lower half is a wrong picture, and
  its embedding would be wrong too). We never touch PIL's global `LOAD_TRUNCATED_IMAGES`.
- Only common web formats are opened. PIL can read many more; some (EPS) shell out to Ghostscript
  and others (TGA) have no magic number, so random bytes can parse as them.
- SVG is rendered with cairosvg, which is imported only when an SVG arrives (it needs the system
  cairo library). External references are never fetched: a corpus file must not make the indexer
  issue HTTP requests or read local files. Inline `data:` images still render.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from PIL import ExifTags, Image, ImageOps

REASONS = ("empty", "corrupt", "truncated", "too_large", "too_small", "unsupported_format", "svg_error")

# Formats we open, in the order PIL tries them. Others are refused even when PIL could read them.
_WANTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "ICO", "PPM")

# Files that are often found where an image was expected; naming them makes the reject list readable.
_NOT_IMAGES = (
    (b"%PDF", "a PDF document"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "a Photoshop document"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
)
_XML_PREAMBLE = b"\xef\xbb\xbf \t\r\n"  # bytes of a UTF-8 byte-order mark, and whitespace
_SVG_DPI = 96  # CSS pixels: 1in = 96px, the unit browsers use for SVG lengths
_SVG_MAX_BYTES = 64 << 20  # an .svgz can inflate a thousandfold; more XML than this is not an icon
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that turn the picture by 90° and so swap width and height
# How PIL's decoders fail on bad input (RuntimeError: libavif). Anything else is a bug worth seeing.
_PIL_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    RuntimeError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    MemoryError,
    Image.DecompressionBombError,
)


class DecodeError(Exception):
    """An image that cannot be used. `reason` is one of `REASONS`; the message names the file."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep `reason` when sent across processes
        return type(self), (self.reason, str(self))


@dataclass(frozen=True)
class DecodeLimits:
    # Header width×height above this is refused unread (64 MP as RGBA ≈ 256 MB). PIL's own bomb check,
    # 2 × Image.MAX_IMAGE_PIXELS ≈ 179 MP by default, also refuses (as too_large) above that.
    max_pixels: int = 64_000_000
    max_side: int | None = 1024  # longest side after decoding (encoders use ≤ 518); None keeps full size
    min_side: int = 1  # a shorter side below this is refused as too_small
    svg_size: int = 512  # longest side an SVG is rasterised at
    background: tuple[int, int, int] = (255, 255, 255)  # shows through transparent pixels

    def __post_init__(self) -> None:
        _check_int("max_pixels", self.max_pixels, 1)
        if self.max_side is not None:
            _check_int("max_side", self.max_side, 1)
        _check_int("min_side", self.min_side, 1)
        if self.max_side is not None and self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must not exceed max_side ({self.max_side})")
        _check_int("svg_size", self.svg_size, 1, 32767)  # cairo's largest image surface side
        bg = tuple(self.background)  # a list after a JSON round trip
        if len(bg) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in bg):
            raise ValueError(f"background must be three integers in 0..255, got {self.background!r}")
        object.__setattr__(self, "background", bg)


def _check_int(field: str, value: object, lo: int, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{field} must be an integer {bound}, got {value!r}")


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # mode RGB, longest side <= limits.max_side
    width: int  # original size, after EXIF rotation and before downscaling (SVG: the rasterised size)
    height: int
    format: str  # PIL's format name ("JPEG", "PNG", "WEBP", ...) or "SVG"


def decode_image(data: bytes, *, name: str = "", limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """Decode `data` (the file's bytes; `name` is used for messages and to recognise .svg/.svgz)."""
    try:
        # PIL and cairosvg warn about bombs, odd EXIF and palette quirks; per image, that floods the
        # logs of a large job, and everything that matters is raised as a DecodeError instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode(data, name, limits)
    except DecodeError as e:
        raise DecodeError(e.reason, f"{name or '<bytes>'}: {e}") from e.__cause__


def _decode(data: bytes, name: str, limits: DecodeLimits) -> Decoded:
    if not data:
        raise DecodeError("empty", "file is empty")
    if _looks_like_svg(data, name):
        im, fmt = _rasterise_svg(data, limits), "SVG"
        width, height = im.size
        _check_size(width, height, limits)
    else:
        try:
            im, fmt, (width, height) = _load_raster(data, limits)
        except _PIL_ERRORS as e:
            raise DecodeError(_reason_for(e, data), f"{type(e).__name__}: {e}") from e
    rgb = _to_rgb(im, limits.background)
    if limits.max_side is not None and max(rgb.size) > limits.max_side:
        rgb.thumbnail((limits.max_side, limits.max_side))  # keeps the aspect ratio
    return Decoded(rgb, width, height, fmt)


def _load_raster(data: bytes, limits: DecodeLimits) -> tuple[Image.Image, str, tuple[int, int]]:
    """Open, check the header size, decode (JPEG at reduced scale) and apply the EXIF orientation."""
    try:
        im = Image.open(io.BytesIO(data), formats=_raster_formats())
    except Image.UnidentifiedImageError:
        what = _name_non_image(data)
        if what:
            raise DecodeError("unsupported_format", f"{what}, not a format we decode") from None
        if _ends_early(data):
            raise DecodeError("truncated", "the file ends before its header says it should") from None
        raise DecodeError("corrupt", "not a recognised image format") from None
    width, height = im.size
    _check_size(width, height, limits)
    fmt = "JPEG" if im.format == "MPO" else im.format  # MPO: a camera JPEG with extra frames
    if fmt == "JPEG" and limits.max_side is not None and max(width, height) > limits.max_side:
        scale = limits.max_side / max(width, height)
        im.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))  # never below the request
    im.load()  # the first frame of an animation
    if _apply_exif_orientation(im):
        width, height = height, width
    return im, fmt, (width, height)


@functools.cache
def _raster_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin; formats this PIL build lacks (AVIF, say) are dropped
    return tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)


def _check_size(width: int, height: int, limits: DecodeLimits) -> None:
    if width * height > limits.max_pixels:
        raise DecodeError("too_large", f"{width}x{height} is over the {limits.max_pixels}-pixel limit")
    if min(width, height) < limits.min_side:
        raise DecodeError("too_small", f"{width}x{height} has a side under {limits.min_side} pixels")


def _apply_exif_orientation(im: Image.Image) -> bool:
    """Turn `im` upright in place; True when that swapped its width and height."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        ImageOps.exif_transpose(im, in_place=True)
    except _PIL_ERRORS + (TypeError,):
        return False  # unreadable EXIF costs the rotation, not a good picture
    return orientation in _ROTATED


def _reason_for(e: BaseException, data: bytes) -> str:
    if isinstance(e, (Image.DecompressionBombError, MemoryError)):
        return "too_large"
    if isinstance(e, EOFError) or "truncated" in str(e).lower() or _ends_early(data):
        return "truncated"
    return "corrupt"


def _ends_early(data: bytes) -> bool:
    """True when a container promises more bytes than there are. libwebp and libavif report a cut-off
    file only as undecodable, so WebP's RIFF length and AVIF's top-level box sizes are checked here."""
    if data[:4] == b"RIFF" and len(data) >= 8:
        return struct.unpack("<I", data[4:8])[0] + 8 > len(data)
    if data[4:8] != b"ftyp":
        return False
    pos = 0
    while pos + 8 <= len(data):
        size = struct.unpack(">I", data[pos : pos + 4])[0]
        if size == 1 and pos + 16 <= len(data):  # a 64-bit size follows the type
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        if size < 8:  # 0 runs to the end of the file; anything else is malformed, not short
            return False
        pos += size
    return pos > len(data)


def _name_non_image(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    for magic, what in _NOT_IMAGES:
        if data.startswith(magic) or head.startswith(magic):
            return what
    brand = data[8:12] if data[4:8] == b"ftyp" else b""
    if brand and not (brand in (b"avif", b"avis") and "AVIF" in _raster_formats()):
        return f"ISO media of brand {brand.decode('latin-1')!r} (a HEIC photo, or a video)"
    return ""


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """8-bit RGB with any transparency (alpha band, palette or colour-key tRNS) laid over `background`."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _high_bit_to_grey(im)
    try:
        if im.has_transparency_data:
            rgba = im.convert("RGBA")
            out = Image.new("RGB", im.size, background)
            out.paste(rgba, mask=rgba)  # out = a·image + (1 − a)·background
            return out
        return im if im.mode == "RGB" else im.convert("RGB")
    except ValueError as e:
        raise DecodeError("unsupported_format", f"pixel mode {im.mode} has no conversion to RGB") from e


def _high_bit_to_grey(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale → 8-bit L, scaled. PIL's own conversion clips at 255,
    which turns most of a 16-bit picture white."""
    a = np.nan_to_num(np.asarray(im, dtype=np.float32))
    if im.mode.startswith("I;16"):
        full = 65535.0
    else:  # I and F carry no declared range: guess it from the brightest pixel
        peak = float(a.max(initial=0.0))
        full = 1.0 if im.mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return Image.fromarray(np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8))


def _looks_like_svg(data: bytes, name: str) -> bool:
    if name.lower().endswith((".svg", ".svgz")):
        return True
    head = data[:512].lstrip(_XML_PREAMBLE)
    return head.startswith((b"<?xml", b"<svg", b"<!--", b"<!DOCTYPE")) and b"<svg" in data[:65536]


def _rasterise_svg(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Render at `svg_size` on the longest side, aspect kept; returns RGBA (transparency preserved)."""
    try:
        from cairosvg.parser import Tree
        from cairosvg.surface import PNGSurface
    except (ImportError, OSError) as e:  # OSError: cairosvg is installed but libcairo is not
        raise DecodeError("unsupported_format", f"SVG needs cairosvg and the cairo library: {e}") from e
    # Expat refuses whitespace before "<?xml"; generated files often carry a stray newline or BOM first.
    xml = (_inflate_svgz(data) if data[:2] == b"\x1f\x8b" else data).lstrip(_XML_PREAMBLE)
    if len(xml) > _SVG_MAX_BYTES:
        raise DecodeError("too_large", f"SVG has over {_SVG_MAX_BYTES >> 20} MB of XML")
    png = io.BytesIO()
    try:
        # unsafe=False also makes the XML parser refuse entities (billion laughs) and external DTDs.
        tree = Tree(bytestring=xml, url_fetcher=_fetch_inline_only, unsafe=False)
        width, height = _svg_output_size(tree, limits.svg_size)
        PNGSurface(tree, png, _SVG_DPI, output_width=width, output_height=height).finish()
        im = Image.open(png, formats=("PNG",))
        im.load()
    except Exception as e:  # cairosvg has no error type of its own; malformed input raises anything
        raise DecodeError("svg_error", f"cannot render SVG: {type(e).__name__}: {e}") from e
    return im


def _inflate_svgz(data: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    try:
        xml = inflater.decompress(data, _SVG_MAX_BYTES + 1)
    except zlib.error as e:
        raise DecodeError("svg_error", f"bad gzip data in .svgz: {e}") from e
    if len(xml) <= _SVG_MAX_BYTES and not inflater.eof:
        raise DecodeError("truncated", "the .svgz gzip stream ends early")
    return xml


def _svg_output_size(tree: object, side: int) -> tuple[int, int]:
    from cairosvg.helpers import node_format

    # node_format applies cairosvg's own sizing rules (width/height, else viewBox) and reads only these
    # attributes of a surface; percentages resolve to 0, as for a document with no container.
    probe = SimpleNamespace(dpi=_SVG_DPI, font_size=16.0, context_width=None, context_height=None)
    width, height, _ = node_format(probe, tree)
    if not (width > 0 and height > 0):
        return side, side  # no intrinsic size: a square canvas
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _fetch_inline_only(url: str, resource_type: str) -> bytes:
    """cairosvg's fetcher hook: `data:` URLs are decoded, anything else (http, file) is an empty SVG."""
    if url.startswith("data:"):
        from cairosvg.url import fetch

        return fetch(url, resource_type)  # urllib decodes data: URLs locally, without a socket
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'
