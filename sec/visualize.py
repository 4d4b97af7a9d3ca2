"""PASCAL VOC colour map, palette PNGs, overlays and panel grids.

Masks are HxW uint8 class indices (255 = ignore); images are HxWx3 uint8 RGB.
"""
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE_SIZE = 256
IGNORE_LABEL = 255
OVERLAY_ALPHA = 0.5
PANEL_MARGIN = 4
PANEL_BACKGROUND = (255, 255, 255)


def voc_palette(num=PALETTE_SIZE):
    """The PASCAL VOC colour map as a flat [r0, g0, b0, r1, ...] list of 3*num ints.

    Class c's colour spreads the bits of c over the channels: bit 3k+0 of c goes to bit 7-k of
    red, bit 3k+1 to green, bit 3k+2 to blue (so 1 is dark red, 15 is (192, 128, 128)).
    """
    palette = []
    for label in range(num):
        rgb = [0, 0, 0]
        value = label
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette.extend(rgb)
    return palette


def palette_array(num=PALETTE_SIZE):
    """voc_palette as a (num, 3) uint8 array."""
    return np.asarray(voc_palette(num), dtype=np.uint8).reshape(num, 3)


def _check_mask(mask):
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"need HxW mask, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() >= PALETTE_SIZE):
        raise ValueError(f"need mask values 0..255, got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)


def save_palette_png(mask, path):
    """Write an HxW class-index mask as a palette PNG (indices stored, VOC colours shown)."""
    image = Image.fromarray(_check_mask(mask), mode="P")
    image.putpalette(voc_palette())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def colorize(mask):
    """HxW class indices -> HxWx3 uint8 VOC colours."""
    return palette_array()[_check_mask(mask)]


def overlay(image, mask, alpha=OVERLAY_ALPHA):
    """Blend the mask's colours onto the image; background (0) and ignore (255) stay as they are."""
    image = np.asarray(image)
    mask = _check_mask(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
        raise ValueError(f"need HxWx3 image matching mask {mask.shape}, got {image.shape}")
    blended = image.astype(np.float32)
    show = (mask != 0) & (mask != IGNORE_LABEL)
    blended[show] = (1 - alpha) * blended[show] + alpha * colorize(mask)[show].astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _as_rgb_cell(item, height, width):
    item = np.asarray(item)
    if item.ndim == 2:
        rgb, resample = colorize(item), Image.NEAREST
    elif item.ndim == 3 and item.shape[2] == 3 and item.dtype == np.uint8:
        rgb, resample = item, Image.BILINEAR
    else:
        raise ValueError(f"panel cells must be HxW masks or HxWx3 uint8 images, got "
                         f"{item.dtype} {item.shape}")
    if rgb.shape[:2] != (height, width):
        rgb = np.asarray(Image.fromarray(rgb).resize((width, height), resample))
    return rgb


def save_panels(rows, path, cell_size=None):
    """Write a grid of panels: rows of cells (images HxWx3 uint8 or masks HxW, coloured).

    Every cell is resized to cell_size (height, width), by default the size of the first cell;
    masks with nearest neighbour. Rows may have different lengths.
    """
    rows = [list(row) for row in rows]
    if not rows or not any(rows):
        raise ValueError("need at least one panel cell")
    if cell_size is None:
        cell_size = np.asarray(next(cell for row in rows for cell in row)).shape[:2]
    height, width = cell_size
    columns = max(len(row) for row in rows)
    canvas = np.empty((len(rows) * (height + PANEL_MARGIN) + PANEL_MARGIN,
                       columns * (width + PANEL_MARGIN) + PANEL_MARGIN, 3), dtype=np.uint8)
    canvas[:] = PANEL_BACKGROUND
    for r, row in enumerate(rows):
        for c, item in enumerate(row):
            top = PANEL_MARGIN + r * (height + PANEL_MARGIN)
            left = PANEL_MARGIN + c * (width + PANEL_MARGIN)
            canvas[top:top + height, left:left + width] = _as_rgb_cell(item, height, width)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return canvas
