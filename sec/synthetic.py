"""A deterministic synthetic segmentation dataset, and a simulator of SEC-style localization cues.

Images: image_size x image_size RGB (JPEG, quality JPEG_QUALITY) with 1-3 objects of 6 classes on
a cluttered background. A class has its own shape, texture and hue: an object's two colours are
saturated (OBJECT_SATURATION) with the class hue (CLASS_HUES, jittered by up to HUE_JITTER degrees)
and differ in brightness; the background is washed-out (saturation below BG_SATURATION) with
faint blobs and stripes. Version 1 drew every colour from one range, so that only shape and
texture told classes apart; the small CPU nets then needed ~10 minutes of pre-training to classify
it at all, and CAM cues from them were far from the paper's quality (see models/README.md).
Objects have varied scales and rotations, may overlap (later ones occlude earlier ones) and may be cut by the
image border; a layout is redrawn until every object keeps MIN_VISIBLE_FRACTION of its area.

Ground truth: palette PNG masks with class indices 0..6 (0 background). The ignore label 255 is
never used: edges are hard (no anti-aliasing), so every pixel has one true class.
Image-level labels: the foreground classes present in the mask.

Cues (simulate_cues): on a cue_size x cue_size grid, the mask is sampled at the cells' pixels
(grid_positions: corners aligned); each
present class gets a contiguous blob of its eroded core (fraction fg_keep, around a random
anchor, like the peak of a class activation map); background seeds are the cells farther than
bg_distance cells from every object; then wrong seeds are added on free cells within
wrong_reach cells of an object but outside it (cores leaking into neighbours and background),
so that a fraction error_rate of all seeds is wrong (fewer when that band has no room). Seed
precision against the grid-sampled mask is therefore 1 - error_rate or a little higher: within
0.01 of 0.95 at the default error_rate 0.05; error_rate 0.2 gives about 0.84. No cell has two
classes. Written as the original pickle: '<id>_labels' int64 (present classes 1..6),
'<id>_cues' int64 (3, K) rows class, row, column.

Everything is drawn from numpy generators seeded with (seed, split, index): the same arguments
give the same files, whatever the number of worker processes.
"""
import argparse
import json
import os
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image
from tqdm import tqdm

from sec.data import write_image_list
from sec.visualize import save_palette_png

CLASSES = ("background", "disk", "square", "triangle", "ring", "cross", "star")
# Texture of each foreground class, in CLASSES order (shape and texture together identify it).
TEXTURES = ("checks", "dots", "stripes", "grid", "noise", "waves")
GENERATOR_VERSION = 2
SPLITS = {"train": 0, "val": 1}

CLASS_HUES = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)  # degrees, foreground classes in CLASSES order
HUE_JITTER = 15.0                    # degrees, uniform, per object colour
OBJECT_SATURATION = (0.55, 0.9)
OBJECT_VALUE_DARK = (0.4, 0.6)       # HSV value of an object's darker colour ...
OBJECT_VALUE_LIGHT = (0.75, 0.95)    # ... and of its lighter one (the texture contrast)
BG_SATURATION = 0.3                  # background base colour: any hue, saturation below this
BG_VALUE = (0.3, 0.85)
BG_BLOBS = (3, 7)                    # number of low-contrast background blobs
BG_CONTRAST = 35.0                   # max amplitude of blobs and stripes (grey levels)
BG_CHROMA = 0.25                     # per-channel share of that amplitude (the rest is grey)
BG_BLOB_SIGMA = (0.08, 0.25)         # blob width as a fraction of the image size
BG_STRIPE_PERIOD = (8.0, 30.0)       # pixels
BG_STRIPE_WEIGHT = 0.5               # stripes are fainter than blobs
PIXEL_NOISE = 4.0                    # std of per-pixel Gaussian noise
OBJECTS_PER_IMAGE = (1, 3)
RADIUS_RANGE = (0.2, 0.36)           # object radius as a fraction of the image size
TEXTURE_PERIOD = (5.0, 12.0)         # pixels
MIN_VISIBLE_FRACTION = 0.4
BORDER_OVERHANG = 0.5                # centres at least this many radii inside the image
MIN_OBJECT_PIXELS = 60
MAX_LAYOUT_TRIES = 100
NOISE_BLOCK = 3                      # pixel size of the "noise" texture's blocks
JPEG_QUALITY = 92
CORE_EROSION = 1                     # cells eroded from an object to find its core
PICKLE_PROTOCOL = 2                  # readable by the original Python 2 code
JOBS_PER_CHUNK = 32                  # images handed to a worker process at a time


@dataclass(frozen=True)
class CueParams:
    """Knobs of the cue simulator (see the module docstring)."""
    fg_keep: float = 0.6
    bg_distance: float = 2.0
    error_rate: float = 0.05
    wrong_reach: int = 2


# Shape geometry in units of the object radius.
SQUARE_HALF_SIDE = 0.8
TRIANGLE_INRADIUS = 0.55
RING_INNER = 0.45
CROSS_HALF_WIDTH = 0.4
STAR_POINTS, STAR_MEAN, STAR_DEPTH = 5, 0.7, 0.3
# Texture geometry in units of the texture period.
DOT_RADIUS = 0.3
GRID_LINE = 0.25


def _shape_mask(shape, a, b):
    """Boolean mask of a unit-radius shape at normalised, rotated coordinates a, b."""
    rho = np.hypot(a, b)
    if shape == "disk":
        return rho <= 1.0
    if shape == "square":
        return np.maximum(np.abs(a), np.abs(b)) <= SQUARE_HALF_SIDE
    if shape == "triangle":
        inside = np.ones(a.shape, bool)
        for k in range(3):
            normal = np.pi / 2 + 2 * np.pi * k / 3
            inside &= a * np.cos(normal) + b * np.sin(normal) <= TRIANGLE_INRADIUS
        return inside
    if shape == "ring":
        return (rho >= RING_INNER) & (rho <= 1.0)
    if shape == "cross":
        along, across = np.abs(a) <= 1.0, np.abs(b) <= 1.0
        return ((np.abs(a) <= CROSS_HALF_WIDTH) & across) | ((np.abs(b) <= CROSS_HALF_WIDTH) & along)
    if shape == "star":
        return rho <= STAR_MEAN + STAR_DEPTH * np.cos(STAR_POINTS * np.arctan2(b, a))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture, u, v, period, rng):
    """Pattern in {0, 1} (float32) on rotated pixel coordinates u, v."""
    if texture == "stripes":
        return (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    if texture == "checks":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if texture == "dots":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return (du * du + dv * dv < (DOT_RADIUS * period) ** 2).astype(np.float32)
    if texture == "grid":
        line = GRID_LINE * period
        return ((np.mod(u, period) < line) | (np.mod(v, period) < line)).astype(np.float32)
    if texture == "waves":
        return (np.sin(2 * np.pi * np.hypot(u, v) / period) > 0).astype(np.float32)
    if texture == "noise":
        size = u.shape[0]
        blocks = rng.random((size // NOISE_BLOCK + 1,) * 2) > 0.5
        return np.kron(blocks, np.ones((NOISE_BLOCK, NOISE_BLOCK)))[:size, :size].astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def hsv_to_rgb(hue, saturation, value):
    """One colour: hue in degrees, saturation and value in [0, 1] -> float32 RGB in [0, 255]."""
    sector = (hue % 360.0) / 60.0
    chroma = value * saturation
    second = chroma * (1 - abs(sector % 2 - 1))
    rgb = [(chroma, second, 0), (second, chroma, 0), (0, chroma, second),
           (0, second, chroma), (second, 0, chroma), (chroma, 0, second)][int(sector) % 6]
    return (255.0 * (np.array(rgb) + value - chroma)).astype(np.float32)


def _two_colours(rng, label):
    """An object's darker and lighter colour, both near its class hue."""
    hue = CLASS_HUES[label - 1]
    return tuple(hsv_to_rgb(hue + rng.uniform(-HUE_JITTER, HUE_JITTER), rng.uniform(*OBJECT_SATURATION),
                            rng.uniform(*values)) for values in (OBJECT_VALUE_DARK, OBJECT_VALUE_LIGHT))


def _faint(rng):
    """Amplitude of a background blob or stripe: mostly grey, a little colour."""
    grey = rng.uniform(-BG_CONTRAST, BG_CONTRAST)
    return grey * (1 - BG_CHROMA) + BG_CHROMA * rng.uniform(-BG_CONTRAST, BG_CONTRAST, size=3)


def _background(rng, yy, xx, size):
    image = np.empty((size, size, 3), np.float32)
    image[:] = hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, BG_SATURATION), rng.uniform(*BG_VALUE))
    for _ in range(rng.integers(BG_BLOBS[0], BG_BLOBS[1] + 1)):
        cy, cx = rng.uniform(0, size, size=2)
        sigma = rng.uniform(*BG_BLOB_SIGMA) * size
        weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma * sigma))
        image += weight[:, :, None] * _faint(rng)
    angle, period = rng.uniform(0, np.pi), rng.uniform(*BG_STRIPE_PERIOD)
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    image += BG_STRIPE_WEIGHT * wave[:, :, None] * _faint(rng)
    return image


def _layout(rng, yy, xx, size):
    """Draw object shapes until all stay visible enough: returns (objects, object index map)."""
    for _ in range(MAX_LAYOUT_TRIES):
        objects, index_map = [], np.full((size, size), -1, np.int16)
        for j in range(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1)):
            label = int(rng.integers(1, len(CLASSES)))
            radius = rng.uniform(*RADIUS_RANGE) * size
            cy, cx = rng.uniform(BORDER_OVERHANG * radius, size - BORDER_OVERHANG * radius, size=2)
            theta = rng.uniform(0, 2 * np.pi)
            u = np.cos(theta) * (xx - cx) + np.sin(theta) * (yy - cy)
            v = -np.sin(theta) * (xx - cx) + np.cos(theta) * (yy - cy)
            shape = _shape_mask(CLASSES[label], u / radius, v / radius)
            index_map[shape] = j
            objects.append((label, u, v, int(shape.sum())))
        visible = np.bincount(index_map[index_map >= 0].ravel(), minlength=len(objects))
        if all(area >= MIN_OBJECT_PIXELS and visible[j] >= MIN_VISIBLE_FRACTION * area
               for j, (_, _, _, area) in enumerate(objects)):
            return objects, index_map
    raise RuntimeError(f"no valid object layout in {MAX_LAYOUT_TRIES} tries (image size {size})")


def render(rng, size):
    """One sample: (image HxWx3 uint8 RGB, mask HxW uint8 class indices)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _background(rng, yy, xx, size)
    objects, index_map = _layout(rng, yy, xx, size)
    mask = np.zeros((size, size), np.uint8)
    for j, (label, u, v, _) in enumerate(objects):
        where = index_map == j
        a, b = _two_colours(rng, label)
        pattern = _texture(TEXTURES[label - 1], u, v, rng.uniform(*TEXTURE_PERIOD), rng)
        image[where] = a + (b - a) * pattern[where][:, None]
        mask[where] = label
    image += rng.normal(0, PIXEL_NOISE, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def image_labels(mask):
    """Foreground classes present in a mask, int64 sorted (the pickle's '<id>_labels')."""
    return np.array([c for c in np.unique(mask) if 0 < c < len(CLASSES)], dtype=np.int64)


def grid_positions(length, cue_size):
    """Pixel index of each of cue_size cells along an axis of `length` pixels, corners aligned:
    cell 0 on the first pixel, the last cell on the last one. This is how SEC's 41 x 41 maps
    meet 321 x 321 images (cell i at pixel 8 i), how deploy upsamples scores and how the CRF
    layer shrinks images (scipy.ndimage.zoom, order 1)."""
    return np.rint(np.arange(cue_size) * (length - 1) / max(cue_size - 1, 1)).astype(int)


def grid_sample(mask, cue_size):
    """The mask sampled on a cue_size x cue_size grid with corners aligned (grid_positions)."""
    return mask[np.ix_(grid_positions(mask.shape[0], cue_size), grid_positions(mask.shape[1], cue_size))]


def grid_upsample(grid, shape):
    """An S x S cue-grid map -> H x W by the nearest cell, corners aligned (grid_positions'
    inverse: grid_sample(grid_upsample(g, shape), S) == g)."""
    rows, cols = (np.rint(np.arange(n) * (s - 1) / max(n - 1, 1)).astype(int) for n, s in zip(shape, grid.shape))
    return grid[np.ix_(rows, cols)]


def simulate_cues(mask, cue_size, rng, params=CueParams()):
    """Sparse, partly wrong seeds from a mask: int64 (3, K) rows class, row, column."""
    grid = grid_sample(mask, cue_size).astype(np.int64)
    seeds = np.full(grid.shape, -1, np.int64)
    cells = np.indices(grid.shape).reshape(2, -1).T
    for label in image_labels(mask):
        obj = grid == label
        core = scipy.ndimage.binary_erosion(obj, iterations=CORE_EROSION, border_value=1)
        core = core if core.any() else obj
        if not core.any():
            continue
        core_cells = cells[core.ravel()]
        anchor = core_cells[rng.integers(len(core_cells))]
        keep = max(1, int(round(params.fg_keep * len(core_cells))))
        order = np.argsort(((core_cells - anchor) ** 2).sum(axis=1), kind="stable")[:keep]
        seeds[tuple(core_cells[order].T)] = label
    far = scipy.ndimage.distance_transform_edt(grid == 0) > params.bg_distance
    if not (grid != 0).any():
        far = np.ones(grid.shape, bool)
    seeds[far & (seeds < 0)] = 0
    num_correct = int((seeds >= 0).sum())
    num_wrong = int(round(params.error_rate * num_correct / (1 - params.error_rate)))
    candidates = []
    for label in np.unique(seeds[seeds > 0]):
        near = scipy.ndimage.binary_dilation(grid == label, iterations=params.wrong_reach)
        free = near & (grid != label) & (seeds < 0)
        candidates += [(label, r, c) for r, c in zip(*np.nonzero(free))]
    if candidates and num_wrong:
        chosen = rng.permutation(len(candidates))
        taken = set()
        for k in chosen:
            label, r, c = candidates[k]
            if (r, c) not in taken:
                seeds[r, c] = label
                taken.add((r, c))
                if len(taken) == num_wrong:
                    break
    rows, cols = np.nonzero(seeds >= 0)
    return np.stack([seeds[rows, cols], rows, cols]).astype(np.int64)


def cue_precision(cues, mask, cue_size):
    """Fraction of seeds whose class equals the grid-sampled mask's class at their cell."""
    grid = grid_sample(mask, cue_size)
    return float((grid[cues[1], cues[2]] == cues[0]).mean()) if cues.shape[1] else float("nan")


def stem(split, index):
    return f"{split}_{index:06d}"


def _make_one(job):
    """Render, write and simulate cues for one image (runs in worker processes)."""
    out_dir, split, index, seed, image_size, cue_size, params = job
    rng = np.random.default_rng([seed, SPLITS[split], index])
    image, mask = render(rng, image_size)
    name = stem(split, index)
    Image.fromarray(image).save(Path(out_dir) / "images" / f"{name}.jpg", quality=JPEG_QUALITY)
    save_palette_png(mask, Path(out_dir) / "masks" / f"{name}.png")
    cues = simulate_cues(mask, cue_size, rng, params) if split == "train" else None
    return split, index, image_labels(mask), cues


def _parameters(n_train, n_val, seed, image_size, cue_size, params):
    return {"version": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val, "seed": seed,
            "image_size": image_size, "cue_size": cue_size, "cue_params": asdict(params),
            "classes": list(CLASSES)}


def is_complete(out_dir, parameters):
    """True when out_dir holds a finished set generated with these parameters."""
    manifest = Path(out_dir) / "manifest.json"
    if not manifest.is_file():
        return False
    if json.loads(manifest.read_text()).get("parameters") != parameters:
        return False
    out_dir = Path(out_dir)
    names = [stem("train", i) for i in range(parameters["n_train"])]
    names += [stem("val", i) for i in range(parameters["n_val"])]
    return all((out_dir / "images" / f"{n}.jpg").is_file() and (out_dir / "masks" / f"{n}.png").is_file()
               for n in names) and (out_dir / "cues.pickle").is_file()


def existing_set(out_dir, image_size, cue_size):
    """The manifest of a complete set in out_dir made by this generator version with this image
    and cue size (any image counts, seed and cue parameters), or None."""
    manifest = Path(out_dir) / "manifest.json"
    if not manifest.is_file():
        return None
    found = json.loads(manifest.read_text())
    parameters = found.get("parameters", {})
    wanted = {"version": GENERATOR_VERSION, "image_size": image_size, "cue_size": cue_size}
    if any(parameters.get(key) != value for key, value in wanted.items()):
        return None
    return found if is_complete(out_dir, parameters) else None


def generate(out_dir, n_train, n_val, seed=0, image_size=160, cue_size=21, workers=1,
             cue_params=CueParams(), progress=False, force=False):
    """Write the dataset into out_dir (see the module docstring); returns the manifest dict.

    Files: images/<split>_NNNNNN.jpg, masks/<split>_NNNNNN.png, train.txt and val.txt
    (`<image file> <id>`, root folder images/), train_labels.json and val_labels.json
    ({"<id>": [classes]}), cues.pickle (train only), manifest.json (written last). A folder
    already holding a complete set with the same parameters is left as it is unless force.
    """
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise ValueError(f"need n_train, n_val >= 0 and some images, got {n_train}, {n_val}")
    out_dir = Path(out_dir)
    parameters = _parameters(n_train, n_val, seed, image_size, cue_size, cue_params)
    if not force and is_complete(out_dir, parameters):
        return json.loads((out_dir / "manifest.json").read_text())
    for sub, suffix in (("images", "jpg"), ("masks", "png")):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
        for split in SPLITS:  # stale files of an earlier set; nothing else is touched
            for path in (out_dir / sub).glob(f"{split}_[0-9]*.{suffix}"):
                path.unlink()
    (out_dir / "manifest.json").unlink(missing_ok=True)
    jobs = [(str(out_dir), split, i, seed, image_size, cue_size, cue_params)
            for split, count in (("train", n_train), ("val", n_val)) for i in range(count)]
    labels = {"train": {}, "val": {}}
    cues = {}
    bar = tqdm(total=len(jobs), desc="synthetic", unit="img", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(_track(pool.map(_make_one, jobs, chunksize=JOBS_PER_CHUNK), bar))
    else:
        results = list(_track(map(_make_one, jobs), bar))
    bar.close()
    for split, index, present, image_cues in results:
        labels[split][str(index)] = present.tolist()
        if image_cues is not None:
            # Fresh arrays: the pickle's bytes must not depend on which process made them.
            cues[f"{index}_labels"] = np.array(present.tolist(), dtype=np.int64)
            cues[f"{index}_cues"] = np.array(image_cues.tolist(), dtype=np.int64).reshape(3, -1)
    for split, count in (("train", n_train), ("val", n_val)):
        write_image_list(out_dir / f"{split}.txt", [(f"{stem(split, i)}.jpg", i) for i in range(count)])
        (out_dir / f"{split}_labels.json").write_text(json.dumps(labels[split]))
    with open(out_dir / "cues.pickle", "wb") as handle:
        pickle.dump(cues, handle, protocol=PICKLE_PROTOCOL)
    manifest = {"parameters": parameters, "num_images": len(jobs)}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _track(iterable, bar):
    for item in iterable:
        bar.update(1)
        yield item


def build_parser():
    parser = argparse.ArgumentParser(description="Generate the synthetic SEC dataset.")
    parser.add_argument("--out", default="generated/synthetic", help="output folder")
    parser.add_argument("--train", type=int, default=2000, help="number of training images")
    parser.add_argument("--val", type=int, default=500, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--image-size", type=int, default=160, help="image side in pixels")
    parser.add_argument("--cue-size", type=int, default=21, help="side of the cue grid")
    parser.add_argument("--error-rate", type=float, default=CueParams.error_rate,
                        help="fraction of simulated seeds that are wrong")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes (output does not depend on it)")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even when a complete set with these parameters exists")
    return parser


def main(args):
    params = CueParams(error_rate=args.error_rate)
    manifest = generate(args.out, args.train, args.val, seed=args.seed, image_size=args.image_size,
                        cue_size=args.cue_size, workers=args.workers, cue_params=params,
                        progress=True, force=args.force)
    print(f"{manifest['num_images']} images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
