"""decode_image on small real files made here: what comes out (pixels, sizes) or why it was refused."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import json
import pickle
import socket
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile, features

from indexing.decode import REASONS, DecodeError, DecodeLimits, decode_image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes = b"") -> bytes:
    """A PNG assembled by hand, for what PIL will not write: 16-bit RGB, or a header with no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(rows)) if rows else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def noise(seed: int, size: tuple[int, int] = (48, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def reject(data: bytes, name: str = "x.bin", **limits) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_image(data, name=name, limits=DecodeLimits(**limits))
    assert info.value.reason in REASONS
    assert str(info.value).startswith(f"{name}: ")  # the reject list can say which file
    return info.value


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# --- transparency ------------------------------------------------------------------------------


def _rgba_strip() -> Image.Image:
    """Pixels 0..2: fully transparent (its hidden colour is black), half-transparent red, opaque blue."""
    im = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (255, 0, 0, 128))
    im.putpixel((2, 0), (0, 0, 255, 255))
    return im


def _palette_strip(fmt: str) -> bytes:
    """P image, index 0 transparent (tRNS in PNG, transparency index in GIF)."""
    im = Image.new("P", (3, 1), 0)
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    im.putdata([0, 1, 2])
    return encode(im, fmt, transparency=0)


PINK = (255, 127, 127)  # 50% red over white
GREYS = [(255,) * 3, (165,) * 3, (29,) * 3]  # the same strip as L: red is L=76, blue L=29; 50% of 76 over 255


@pytest.mark.parametrize(
    "fmt, data, want",
    [
        ("PNG", encode(_rgba_strip(), "PNG"), [WHITE, PINK, BLUE]),
        ("WEBP", encode(_rgba_strip(), "WEBP", lossless=True), [WHITE, PINK, BLUE]),
        ("PNG", encode(_rgba_strip().convert("LA"), "PNG"), GREYS),
        ("PNG", _palette_strip("PNG"), [WHITE, RED, BLUE]),
        ("GIF", _palette_strip("GIF"), [WHITE, RED, BLUE]),
    ],
    ids=["png-rgba", "webp-rgba", "png-la", "png-palette-trns", "gif-transparency"],
)
def test_transparency_is_laid_over_white(fmt: str, data: bytes, want: list[tuple[int, int, int]]) -> None:
    dec = decode_image(data, name=f"icon.{fmt.lower()}")
    assert dec.format == fmt and dec.image.mode == "RGB"
    got = [dec.image.getpixel((x, 0)) for x in range(3)]
    assert got[0] == WHITE  # a bare convert("RGB") shows the hidden black instead
    assert all(close(g, w, 1) for g, w in zip(got, want, strict=True)), got  # observed: off by ≤ 1 from rounding


def test_rgb_colour_key_is_transparent() -> None:
    im = Image.new("RGB", (2, 1), (10, 20, 30))
    im.putpixel((1, 0), RED)
    dec = decode_image(encode(im, "PNG", transparency=(10, 20, 30)))
    assert [dec.image.getpixel((x, 0)) for x in range(2)] == [WHITE, RED]


def test_background_colour_is_configurable() -> None:
    dec = decode_image(encode(_rgba_strip(), "PNG"), limits=DecodeLimits(background=(0, 128, 0)))
    assert dec.image.getpixel((0, 0)) == (0, 128, 0)
    assert close(dec.image.getpixel((1, 0)), (128, 64, 0), 1)


# --- modes and formats -------------------------------------------------------------------------


def test_palette_greyscale_and_bilevel_become_rgb() -> None:
    pal = Image.new("RGB", (4, 4), (200, 60, 30)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert decode_image(encode(pal, "PNG")).image.getpixel((0, 0)) == (200, 60, 30)
    assert decode_image(encode(Image.new("L", (4, 4), 77), "PNG")).image.getpixel((1, 1)) == (77, 77, 77)
    bilevel = Image.new("1", (4, 4), 0)
    bilevel.putpixel((3, 3), 1)
    dec = decode_image(encode(bilevel, "PNG"))
    assert dec.image.getpixel((0, 0)) == (0, 0, 0) and dec.image.getpixel((3, 3)) == WHITE


def test_16bit_greyscale_is_scaled_not_clipped() -> None:
    a = np.array([[0, 4096, 32768, 65535]], dtype=np.uint16)
    dec = decode_image(encode(Image.fromarray(a), "PNG"))  # opens as I;16; PIL's convert("L") clips to 255
    assert [dec.image.getpixel((x, 0))[0] for x in range(4)] == [0, 16, 128, 255]


def test_16bit_rgb_png_keeps_its_colour() -> None:
    row = b"\x00" + struct.pack(">6H", 0xC800, 0x3C00, 0x1E00, 0xFFFF, 0xFFFF, 0x0000)
    dec = decode_image(png_bytes(2, 1, bit_depth=16, colour_type=2, rows=row))
    assert [dec.image.getpixel((x, 0)) for x in range(2)] == [(200, 60, 30), (255, 255, 0)]


def test_cmyk_jpeg_comes_back_close_to_its_rgb() -> None:
    cmyk = Image.new("RGB", (16, 16), (200, 60, 30)).convert("CMYK")
    dec = decode_image(encode(cmyk, "JPEG", quality=95), name="print.jpg")
    assert dec.format == "JPEG" and dec.image.mode == "RGB"
    assert close(dec.image.getpixel((8, 8)), (200, 60, 30), 4)  # observed: exact


def test_webp_and_one_pixel_images_decode() -> None:
    dec = decode_image(encode(Image.new("RGB", (8, 6), (30, 180, 40)), "WEBP", lossless=True))
    assert (dec.format, dec.width, dec.height, dec.image.getpixel((4, 3))) == ("WEBP", 8, 6, (30, 180, 40))
    tiny = decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert (tiny.width, tiny.height, tiny.image.size, tiny.image.getpixel((0, 0))) == (1, 1, (1, 1), (1, 2, 3))


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (40, 20), BLUE)
    im.paste(RED, (0, 0, 10, 10))  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    dec = decode_image(encode(im, "JPEG", quality=95, exif=exif.tobytes()), name="phone.jpg")
    assert (dec.width, dec.height) == (20, 40) and dec.image.size == (20, 40)
    assert close(dec.image.getpixel((17, 2)), RED, 10)  # turned clockwise, top-left moves to top-right
    assert close(dec.image.getpixel((2, 2)), BLUE, 10)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert close(decode_image(data).image.getpixel((4, 4)), RED, 4)


# --- size limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [100_000, 10_000])  # PIL's own bomb error; PIL's warning band, our cap
def test_huge_header_is_refused_before_decoding(side: int) -> None:
    data = png_bytes(side, side, bit_depth=8, colour_type=2)  # a header and no pixels: ~60 bytes
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = reject(data, name="bomb.png")
    assert err.reason == "too_large"
    assert caught == []  # DecompressionBombWarning is not printed per image
    assert time.perf_counter() - t0 < 1.0  # decoding 10⁸–10¹⁰ pixels would take far longer (observed: ~1 ms)


def test_our_pixel_cap_and_min_side_apply() -> None:
    data = encode(noise(0, (20, 20)), "PNG")
    assert reject(data, max_pixels=399).reason == "too_large"
    assert decode_image(data, limits=DecodeLimits(max_pixels=400)).width == 20
    assert reject(encode(noise(1, (30, 4)), "PNG"), min_side=5).reason == "too_small"


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """5000×4000 photo-sized JPEG with four coloured quadrants."""
    im = Image.new("RGB", (5000, 4000), (240, 240, 240))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, 2499, 1999), fill=(220, 20, 20))
    draw.rectangle((2500, 0, 4999, 1999), fill=(20, 200, 20))
    draw.rectangle((0, 2000, 2499, 3999), fill=(20, 20, 220))
    return encode(im, "JPEG", quality=80)


def test_big_jpeg_is_downscaled_but_reports_its_size(big_jpeg: bytes) -> None:
    dec = decode_image(big_jpeg, name="photo.jpg")
    assert (dec.width, dec.height, dec.format) == (5000, 4000, "JPEG")
    assert dec.image.size == (1024, 819)
    corners = [dec.image.getpixel(p) for p in [(5, 5), (1018, 5), (5, 813), (1018, 813)]]
    for got, want in zip(corners, [(220, 20, 20), (20, 200, 20), (20, 20, 220), (240, 240, 240)], strict=True):
        assert close(got, want, 6)
    full = decode_image(big_jpeg, limits=DecodeLimits(max_side=None))
    assert full.image.size == (5000, 4000)


# --- bad bytes ---------------------------------------------------------------------------------


def test_truncated_files_are_refused() -> None:
    for fmt, params in [("PNG", {}), ("JPEG", {"quality": 90}), ("GIF", {}), ("WEBP", {"lossless": True})]:
        data = encode(noise(2, (64, 64)), fmt, **params)
        assert reject(data[: len(data) // 2], name=f"half.{fmt.lower()}").reason == "truncated", fmt
    webp = encode(noise(2, (64, 64)), "WEBP")
    assert reject(webp[:12], name="stub.webp").reason == "truncated"  # cut right after the RIFF header
    if features.check("avif"):  # libavif, like libwebp, reports a short file only as undecodable
        avif = encode(noise(2, (64, 64)), "AVIF")
        assert reject(avif[: len(avif) // 2], name="half.avif").reason == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # refused without flipping PIL's global switch


def test_empty_random_and_non_image_bytes() -> None:
    assert reject(b"", name="empty.jpg").reason == "empty"
    rng = np.random.default_rng(3)
    assert reject(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), name="noise.jpg").reason == "corrupt"
    html = reject(b"<!DOCTYPE html><html><body>404 Not Found</body></html>", name="cat.jpg")
    assert html.reason == "unsupported_format" and "HTML" in str(html)
    assert reject(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", name="scan.jpg").reason == "unsupported_format"


def test_mutated_files_never_escape_as_raw_exceptions() -> None:
    """Seeded byte flips and cuts of real files: every outcome is an RGB image or a DecodeError."""
    base = noise(4, (24, 16))
    files = [
        encode(base, "PNG"),
        encode(base, "JPEG"),
        encode(base.convert("P"), "GIF"),
        encode(base, "BMP"),
        encode(base, "WEBP"),
        encode(base, "TIFF"),
        encode(base.convert("CMYK"), "JPEG"),
    ]
    rng = np.random.default_rng(5)
    outcomes = set()
    for i in range(700):
        data = bytearray(files[i % len(files)][: int(rng.integers(8, 2000))])
        for pos in rng.integers(0, len(data), int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        try:
            dec = decode_image(bytes(data), name="fuzz")
            assert dec.image.mode == "RGB"
            outcomes.add("ok")
        except DecodeError as e:
            outcomes.add(e.reason)
    assert {"ok", "corrupt", "truncated"} <= outcomes  # observed: exactly these three


# --- SVG ---------------------------------------------------------------------------------------

HALF_RED_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100">'
    b'<rect width="100" height="100" fill="#ff0000"/></svg>'  # right half left transparent
)


def test_svg_is_rasterised_on_the_background() -> None:
    dec = decode_image(HALF_RED_SVG, name="logo")  # recognised by content, not by name
    assert (dec.format, dec.width, dec.height, dec.image.size) == ("SVG", 512, 256, (512, 256))
    assert dec.image.getpixel((100, 128)) == RED and dec.image.getpixel((400, 128)) == WHITE
    small = decode_image(b"\xef\xbb\xbf\n<?xml version='1.0'?>\n" + HALF_RED_SVG, limits=DecodeLimits(svg_size=64))
    assert small.image.size == (64, 32) and small.image.getpixel((60, 16)) == WHITE


def test_svg_without_size_uses_its_viewbox_and_svgz_is_read() -> None:
    tall = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 50 100"><rect width="50" height="50" fill="blue"/>'
    tall += b"</svg>"
    dec = decode_image(gzip.compress(tall), name="tall.svgz")
    assert dec.image.size == (256, 512)
    assert dec.image.getpixel((128, 100)) == BLUE and dec.image.getpixel((128, 400)) == WHITE


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect',
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg"><text>&b;</text></svg>',  # entity expansion is refused
        gzip.compress(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')[:-9],
    ],
    ids=["unclosed", "entities", "svgz-cut"],
)
def test_malformed_svg_is_refused(data: bytes) -> None:
    assert reject(data, name="broken.svg").reason == ("truncated" if data[:2] == b"\x1f\x8b" else "svg_error")


def test_svg_without_any_size_is_a_blank_square() -> None:
    dec = decode_image(b"<svg></svg>", name="blank.svg")
    assert dec.image.size == (512, 512) and dec.image.getextrema() == ((255, 255),) * 3


def test_svg_never_fetches_external_resources(tmp_path, monkeypatch) -> None:
    calls: list[str] = []

    def no_network(*args, **kwargs):
        calls.append(repr(args))
        raise AssertionError("decode_image touched the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    local_red = tmp_path / "red.png"
    local_red.write_bytes(encode(Image.new("RGB", (4, 4), RED), "PNG"))
    inline_blue = base64.b64encode(encode(Image.new("RGB", (4, 4), BLUE), "PNG")).decode()
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="300" height="100">'
        '<image x="0" y="0" width="100" height="100" xlink:href="http://example.com/cat.png"/>'
        f'<image x="100" y="0" width="100" height="100" href="{local_red.as_uri()}"/>'
        f'<image x="200" y="0" width="100" height="100" href="data:image/png;base64,{inline_blue}"/></svg>'
    ).encode()
    dec = decode_image(svg, name="refs.svg", limits=DecodeLimits(svg_size=300))
    assert calls == []
    assert dec.image.getpixel((50, 50)) == WHITE  # the remote picture is simply missing
    assert dec.image.getpixel((150, 50)) == WHITE  # local files are not read either
    assert dec.image.getpixel((250, 50)) == BLUE  # inline data: images still render


# --- configuration and errors --------------------------------------------------------------------


def test_limits_are_frozen_picklable_and_survive_json() -> None:
    limits = DecodeLimits(max_side=256, background=(10, 20, 30))
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_side = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(limits)) == limits
    assert DecodeLimits(**json.loads(json.dumps(dataclasses.asdict(limits)))) == limits  # background: list → tuple


@pytest.mark.parametrize(
    "bad",
    [
        {"max_pixels": 0},
        {"max_side": 0},
        {"min_side": 0},
        {"min_side": 20, "max_side": 10},
        {"svg_size": 0},
        {"svg_size": 40000},
        {"background": (255, 255)},
        {"background": (0, 0, 256)},
        {"max_side": 2.5},
    ],
)
def test_bad_limits_raise_value_error(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        DecodeLimits(**bad)


def test_decode_error_keeps_its_reason_across_processes() -> None:
    err = pickle.loads(pickle.dumps(reject(b"", name="a.png")))
    assert (err.reason, str(err)) == ("empty", "a.png: file is empty")
