"""Image files in: the size from the header, refused past a pixel limit before anything is decoded.

A 876 KB PNG of 30000x30000 grey pixels decodes to 2.7 GB of BGR, and the post-processing works at the frame's
size: a file a stranger hands over could take a Jetson's memory. So :func:`read_image` reads the width and height
from the file's header (:func:`header_size`: PNG, JPEG, BMP, GIF, WebP, TIFF / BigTIFF, PNM / PAM / PFM,
JPEG 2000), refuses more than ``max_pixels`` (:data:`DEFAULT_MAX_PIXELS`, 40 megapixels: 120 MB as BGR; raise it
with ``max_pixels=``) with a :class:`FrameError` naming the size and the option, and refuses a format whose header it
cannot read, as Pillow refuses a decompression bomb. A file larger than any image of ``max_pixels`` could be is
refused before it is read.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from runtimes.errors import M2FError

DEFAULT_MAX_PIXELS = 40_000_000  # an 8 GB Jetson holds the frame, its labels and an overlay several times over
_MAX_BYTES_PER_PIXEL = 16  # 4 channels x 32-bit float, the largest sample an uncompressed file stores
_HEADER_BYTES = 1 << 16  # where every supported format states its size (a JPEG's EXIF block comes first: <= 64 KB)


class FrameError(M2FError, ValueError):
    """A frame the SDK cannot turn into a BGR image, with what was wrong."""


def _png(b: bytes) -> tuple[int, int] | None:
    if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR":
        return struct.unpack(">II", b[16:24])
    return None


def _jpeg(b: bytes) -> tuple[int, int] | None:
    if b[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(b):
        if b[pos] != 0xFF:
            return None
        marker = b[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # TEM, RSTn: no length
            pos += 2
            continue
        (length,) = struct.unpack(">H", b[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            if pos + 9 > len(b):
                return None
            height, width = struct.unpack(">HH", b[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _bmp(b: bytes) -> tuple[int, int] | None:
    if b[:2] != b"BM" or len(b) < 22:
        return None
    if struct.unpack("<I", b[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", b[18:22])
    if len(b) < 26:
        return None
    width, height = struct.unpack("<ii", b[18:26])
    return abs(width), abs(height)  # a negative height means top-down rows


def _gif(b: bytes) -> tuple[int, int] | None:
    return struct.unpack("<HH", b[6:10]) if b[:6] in (b"GIF87a", b"GIF89a") else None


def _webp(b: bytes) -> tuple[int, int] | None:
    if b[:4] != b"RIFF" or b[8:12] != b"WEBP":
        return None
    chunk = b[12:16]  # struct.error below where the file ends before the size
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", b[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", b[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1
    return None


def _tiff(b: bytes) -> tuple[int, int] | None:
    order = {b"II": "<", b"MM": ">"}.get(b[:2])
    if order is None:
        return None
    version = struct.unpack(order + "H", b[2:4])[0]
    if version == 42:  # classic: 4-byte offsets, 12-byte entries
        offset, count_fmt, entry_size, value_at = struct.unpack(order + "I", b[4:8])[0], "H", 12, 8
    elif version == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
        offset, count_fmt, entry_size, value_at = struct.unpack(order + "Q", b[8:16])[0], "Q", 20, 12
    else:
        return None
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > len(b):
        return None
    (entries,) = struct.unpack(order + count_fmt, b[offset : offset + count_size])
    size: dict[int, int] = {}
    for i in range(entries):
        at = offset + count_size + i * entry_size
        if at + entry_size > len(b):
            return None
        tag, kind = struct.unpack(order + "HH", b[at : at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG (or LONG8 in BigTIFF)
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                return None
            size[tag] = struct.unpack(order + fmt, b[at + value_at : at + value_at + struct.calcsize(fmt)])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def _netpbm(b: bytes) -> tuple[int, int] | None:
    if b[:1] != b"P" or b[1:2] not in b"1234567fF" or not b[1:2]:
        return None
    text = b[2:1024].decode("latin1")
    if b[1:2] == b"7":  # PAM: WIDTH / HEIGHT lines
        fields = dict(line.split(None, 1) for line in text.splitlines() if len(line.split(None, 1)) == 2)
        width, height = fields.get("WIDTH", ""), fields.get("HEIGHT", "")
    else:
        tokens = " ".join(line.split("#", 1)[0] for line in text.splitlines()).split()
        width, height = [*tokens, "", ""][:2]
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else None


def _jpeg2000(b: bytes) -> tuple[int, int] | None:
    if b[:4] == b"\xff\x4f\xff\x51":  # a raw codestream: the SIZ marker segment
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", b[8:24])
        return xsiz - xosiz, ysiz - yosiz
    if b[4:12] != b"jP  \r\n\x87\n":
        return None
    at = b.find(b"ihdr")  # inside the jp2h box: height, width
    if at < 0 or at + 12 > len(b):
        return None
    height, width = struct.unpack(">II", b[at + 4 : at + 12])
    return width, height


_FORMATS = {"PNG": _png, "JPEG": _jpeg, "BMP": _bmp, "GIF": _gif, "WebP": _webp, "TIFF": _tiff,
            "PNM/PAM/PFM": _netpbm, "JPEG 2000": _jpeg2000}  # fmt: skip


def header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) stated by an image file's first bytes, or None where no known format's header is readable."""
    for parse in _FORMATS.values():
        try:
            size = parse(head)
        except (struct.error, ValueError, IndexError):
            size = None
        if size is not None:
            return size
    return None


def file_header_size(path: str | Path) -> tuple[int, int] | None:
    """:func:`header_size` of the file at ``path`` (its first ``_HEADER_BYTES``); OSError where it cannot be read."""
    with Path(path).open("rb") as file:
        return header_size(file.read(_HEADER_BYTES))


def check_pixels(width: int, height: int, max_pixels: int | None, what: str = "image") -> None:
    """FrameError when a ``width`` x ``height`` frame has more than ``max_pixels`` pixels (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise FrameError(
            f"{what} of {width}x{height} px ({width * height / 1e6:.1f} megapixels) is over the limit of "
            f"{max_pixels / 1e6:g} megapixels, refused before decoding: raise it with max_pixels= "
            "(m2f: --max-pixels) if this machine has the memory, or downscale the image"
        )


def check_image_file(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file from its header, nothing decoded; FrameError for an empty or unreadable
    file, a format whose size its header does not tell, or more than ``max_pixels`` pixels (None: no limit)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        dims = file_header_size(path)
    except OSError as err:
        raise FrameError(f"cannot read the file ({err.strerror or err})") from err
    if size == 0:
        raise FrameError("empty file")
    if dims is None:
        raise FrameError(f"not an image whose size can be read before decoding (m2f reads {', '.join(_FORMATS)})")
    check_pixels(*dims, max_pixels)
    if max_pixels is not None and size > max_pixels * _MAX_BYTES_PER_PIXEL + _HEADER_BYTES:
        raise FrameError(f"a {size}-byte file is larger than any image of {max_pixels} pixels could be")
    return dims


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as HxWx3 uint8 BGR (EXIF orientation applied; 16 bits scaled to 8 by ``>> 8``), after
    :func:`check_image_file` let it through; FrameError for anything OpenCV cannot decode to 8 or 16 bits."""
    check_image_file(path, max_pixels)
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as err:
        raise FrameError(f"cannot read the file ({err.strerror or err})") from err
    frame = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    del data
    if frame is None:
        raise FrameError("not an image OpenCV can decode")
    check_pixels(frame.shape[1], frame.shape[0], max_pixels, "decoded image")  # a header that understated it
    if frame.dtype == np.uint16:
        return (frame >> 8).astype(np.uint8)
    if frame.dtype != np.uint8:
        raise FrameError(f"{frame.dtype} pixels (a float image?): save it as an 8- or 16-bit image first")
    return frame
