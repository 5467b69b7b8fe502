"""Minimal PNG writer and reader (8-bit, no imaging dependency) and image grids."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_COLOUR_TYPES = {c: t for t, c in _CHANNELS.items()}  # samples per pixel -> PNG colour type


def write_png(path: str, img: torch.Tensor) -> None:
    """Write values in [0, 1] as an 8-bit PNG: ``(H, W)`` or ``(1, H, W)`` grayscale, ``(2, H, W)`` grayscale +
    alpha, ``(3, H, W)`` RGB or ``(4, H, W)`` RGBA."""
    if img.dim() == 3 and img.shape[0] == 1:
        img = img[0]
    if img.dim() not in (2, 3) or (img.dim() == 3 and img.shape[0] not in _COLOUR_TYPES) or img.numel() == 0:
        raise ValueError(f"write_png({path!r}): expected an (H, W) or (C, H, W) image with C in 1..4, "
                         f"got shape {tuple(img.shape)}")
    a = (img.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    colour = 0 if a.dim() == 2 else _COLOUR_TYPES[a.shape[0]]
    if a.dim() == 3:
        a = a.permute(1, 2, 0)
    a = a.contiguous().numpy()
    raw = b"".join(b"\x00" + row.tobytes() for row in a)

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    with open(path, "wb") as f:
        f.write(_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 8, colour, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def read_png(path: str) -> np.ndarray:
    """Read an 8-bit, non-interlaced grayscale/RGB(A) PNG as uint8 ``(H, W)`` or ``(H, W, C)``
    (alpha dropped). Anything else raises ``ValueError`` naming the file."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        (length,), tag = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if tag == b"IHDR":
            if len(body) != 13:
                raise ValueError(f"{path}: damaged PNG header")
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        pos += 12 + length
    if header is None:
        raise ValueError(f"{path}: PNG without IHDR")
    w, h, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise ValueError(f"{path}: only 8-bit non-interlaced gray/RGB/RGBA PNGs are supported "
                         f"(bit depth {depth}, colour type {colour}, interlace {interlace})")
    bpp = _CHANNELS[colour]
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, 1 + w * bpp)
    except (zlib.error, ValueError) as err:  # a file cut short or damaged
        raise ValueError(f"{path}: damaged PNG image data ({err})") from None
    out = np.zeros((h, w * bpp), np.int32)
    prev = np.zeros(w * bpp, np.int32)
    for r in range(h):  # undo the per-row filters (None, Sub, Up, Average, Paeth)
        kind, line = raw[r, 0], raw[r, 1:].astype(np.int32)
        if kind in (0, 2):
            cur = (line + (prev if kind == 2 else 0)) & 255
        else:
            cur = np.zeros_like(line)
            for i in range(len(line)):
                a = cur[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (line[i] + pred) & 255
        out[r], prev = cur, cur
    img = out.astype(np.uint8).reshape(h, w, bpp)
    img = img[..., : 3 if bpp >= 3 else 1]
    return img[..., 0] if img.shape[-1] == 1 else img


def class_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, pad: int = 1) -> torch.Tensor:
    """Tile images (values in [0, 1]) one row per class; returns ``(H', W')`` or ``(3, H', W')``."""
    n, c, h, w = images.shape
    rows = [images[labels == k] for k in range(num_classes)]
    ncol = max(1, max(len(r) for r in rows))
    g = torch.ones(c, num_classes * (h + pad) + pad, ncol * (w + pad) + pad)
    for k, r in enumerate(rows):
        for j, img in enumerate(r):
            y0, x0 = pad + k * (h + pad), pad + j * (w + pad)
            g[:, y0:y0 + h, x0:x0 + w] = img
    return g[0] if c == 1 else g[:3]


def labelled_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, names=(), *, min_px: int = 64,
                  pad: int = 2, text_scale: int = 2, max_chars: int = 20) -> torch.Tensor:
    """:func:`class_grid`, readable: each image enlarged (nearest neighbour, an integer factor) to at
    least ``min_px`` pixels on its short side, and each row labelled on the left with its class name
    (``names[k]``; the class index where there are no names), drawn with the built-in 5×7 font
    (:mod:`.raster`) ``text_scale`` times enlarged. Returns ``(H', W')`` for one-channel images,
    else ``(3, H', W')``, values in [0, 1]."""
    from .raster import GLYPH_H, text_mask, text_width

    if images.dim() != 4:
        raise ValueError(f"labelled_grid: images must be (N, C, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    factor = max(1, -(-min_px // min(h, w)))  # ceil: every image at least min_px
    big = images.detach().float().cpu().repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    grid = class_grid(big, labels.cpu(), num_classes, pad=pad)
    if grid.dim() == 2:
        grid = grid.unsqueeze(0)
    titles = []
    for k in range(num_classes):
        name = str(names[k]) if k < len(names) else str(k)
        titles.append(name if len(name) <= max_chars else name[:max_chars - 2] + "..")
    margin = 2 * pad + max(text_width(t, text_scale) for t in titles) + 4 * text_scale
    out = torch.ones(grid.shape[0], grid.shape[1], margin + grid.shape[2])
    out[:, :, margin:] = grid
    row = h * factor + pad
    for k, t in enumerate(titles):  # black text, vertically centred on its row
        m = torch.from_numpy(text_mask(t, text_scale))
        y0 = pad + k * row + (h * factor - GLYPH_H * text_scale) // 2
        x0 = 2 * pad
        out[:, y0:y0 + m.shape[0], x0:x0 + m.shape[1]][:, m] = 0.0
    return out[0] if out.shape[0] == 1 else out


__all__ = ["class_grid", "labelled_grid", "read_png", "write_png"]
