"""Stand-in photographs for PASCAL VOC 2012, rendered from the real segmentation masks.

The photographs are not available to this project; the masks, the image ids and the authors'
localization cues are. This module paints, for every mask, an image in which each labelled
region carries an appearance drawn from its class's distribution, on a cluttered background, so
that SEC can be trained and scored on VOC's real object layouts. The design and its rationale
are in data/README.md ("VOC stand-ins"); in short:

- each foreground class has a texture family (TEXTURES) shared with two or three other classes,
  two hue modes shared with other classes, and ranges of saturation and brightness
  (CLASS_APPEARANCE); every object instance (a connected region of a class) draws its own hue
  (mode + Gaussian jitter), saturation, brightness, texture period, orientation and contrast, so
  that neither colour nor texture alone names the class;
- with probability PART_PROBABILITY an instance has a second part (a half-plane cut through it)
  painted in the class's other hue mode, and every object is darkened towards its rim;
- the background is 2-4 "stuff" regions (smooth random partition) with low-contrast textures of
  any hue, plus 1-5 distractor shapes (unannotated things, labelled background) in the stuff's
  appearance, under a global illumination gradient;
- then Gaussian blur, pixel noise and JPEG compression.

Geometry: the image is rendered at `scale` x the mask's size (nearest-neighbour mask, pixel
centres aligned, see `downsample_mask`); void pixels (255) are painted as their nearest labelled
pixel. Images are HxWx3 uint8 RGB JPEGs; masks class indices 0..20 with 255 void.

Determinism: every random number of an image comes from numpy's generator seeded with
(GENERATOR_VERSION, the id's SHA-256), so an id renders to the same pixels in any process order.

Output, a VOC-layout folder (sec.data.VOCLayout reads it):
  JPEGImages/<id>.jpg, SegmentationClassAug/<id>.png (the real mask at the render's size, VOC
  palette), ImageSets/Segmentation/{train_aug,val}.txt, manifest.json (generator, version,
  parameters, counts; "complete" only once every image is written).
An interrupted render resumes: images whose two files exist are kept when the manifest's
parameters are the requested ones, otherwise every image is rendered again.

    python -m sec.voc_render --masks generated/voc12 --out generated/voc_shapes
"""
import argparse
import hashlib
import json
import os
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image
from tqdm import tqdm

from sec.data import VOC_CLASSES
from sec.synthetic import hsv_to_rgb
from sec.visualize import save_palette_png

GENERATOR = "sec.voc_render"
GENERATOR_VERSION = 2               # 1: commit 49bd944 (distractors in object appearances, hue sd 20)
DEFAULT_SCALE = 1.0 / 3.0           # render size / mask size (a 500x375 mask -> 167x125 image)
IGNORE_LABEL = 255
SPLITS = ("train_aug", "val")       # id lists of the mask folder, <split>.txt
MASK_FOLDER = "SegmentationClassAug"
JPEG_QUALITY = 90
IDS_PER_CHUNK = 16                  # images handed to a worker process at a time

TEXTURES = ("flat", "stripes", "checks", "dots", "grid", "fur", "blotches")


@dataclass(frozen=True)
class ClassAppearance:
    """One class's appearance distribution: texture family, two hue modes (degrees), HSV
    saturation and value ranges of the darker colour."""
    texture: str
    hues: tuple
    saturation: tuple
    value: tuple


# Classes that VOC confuses (animals, vehicles, furniture) share texture families; every hue
# mode is shared with other classes. Indexed by class - 1 (VOC_CLASSES[1:]).
CLASS_APPEARANCE = (
    ClassAppearance("stripes", (210, 0), (0.10, 0.50), (0.55, 0.90)),    # aeroplane
    ClassAppearance("grid", (0, 120), (0.40, 0.90), (0.30, 0.75)),       # bicycle
    ClassAppearance("fur", (200, 50), (0.30, 0.80), (0.35, 0.85)),       # bird
    ClassAppearance("stripes", (0, 120), (0.30, 0.80), (0.35, 0.85)),    # boat
    ClassAppearance("dots", (120, 60), (0.40, 0.90), (0.25, 0.75)),      # bottle
    ClassAppearance("checks", (50, 0), (0.50, 0.90), (0.45, 0.90)),      # bus
    ClassAppearance("flat", (0, 240), (0.40, 0.90), (0.25, 0.75)),       # car
    ClassAppearance("fur", (30, 300), (0.10, 0.50), (0.25, 0.80)),       # cat
    ClassAppearance("grid", (30, 240), (0.30, 0.70), (0.20, 0.60)),      # chair
    ClassAppearance("blotches", (30, 0), (0.10, 0.50), (0.20, 0.85)),    # cow
    ClassAppearance("stripes", (30, 300), (0.30, 0.70), (0.25, 0.70)),   # diningtable
    ClassAppearance("fur", (120, 0), (0.20, 0.60), (0.30, 0.85)),        # dog
    ClassAppearance("blotches", (240, 50), (0.30, 0.80), (0.20, 0.70)),  # horse
    ClassAppearance("checks", (240, 120), (0.30, 0.80), (0.20, 0.70)),   # motorbike
    ClassAppearance("flat", (20, 180), (0.30, 0.70), (0.40, 0.85)),      # person
    ClassAppearance("blotches", (120, 300), (0.40, 0.90), (0.20, 0.70)), # pottedplant
    ClassAppearance("dots", (50, 240), (0.10, 0.50), (0.50, 0.90)),      # sheep
    ClassAppearance("dots", (0, 180), (0.30, 0.70), (0.20, 0.70)),       # sofa
    ClassAppearance("checks", (180, 300), (0.30, 0.80), (0.30, 0.80)),   # train
    ClassAppearance("grid", (180, 60), (0.20, 0.60), (0.10, 0.50)),      # tvmonitor
)
NUM_CLASSES = len(VOC_CLASSES)

# Objects (one instance = one connected region of a class).
HUE_JITTER_SD = 12.0                # degrees, Gaussian, per instance (version 1: 20)
OBJECT_CONTRAST = (0.15, 0.40)      # HSV value added to the darker colour for the lighter one
LIGHT_HUE_SHIFT = 15.0              # degrees, uniform +-, lighter colour's hue against the darker's
TEXTURE_PERIOD = (12.0, 30.0)       # pixels of the full-size mask (x scale at render size)
PART_PROBABILITY = 0.5              # an instance gets a second part in the other hue mode
PART_OFFSET = 0.5                   # part cut: this fraction of the instance's size off its centroid
RIM_DARKEN = 0.35                   # value x (1 - RIM_DARKEN) on the rim, fading inwards ...
RIM_WIDTH = 6.0                     # ... over this many full-size pixels (x scale)
OBJECT_SHADING = 0.15               # amplitude of a smooth multiplicative shading inside objects ...
OBJECT_SHADING_PERIOD = 120.0       # ... of this wavelength (full-size pixels, x scale)
# Background.
STUFF_REGIONS = (2, 4)
STUFF_PERIOD = (0.4, 1.2)           # of the image side: scale of the smooth region partition
STUFF_SATURATION = (0.0, 0.50)
STUFF_VALUE = (0.25, 0.90)
STUFF_CONTRAST = (0.03, 0.12)
STUFF_TEXTURE_SCALE = 2.0           # stuff textures are this much coarser than objects'
DISTRACTORS = (1, 5)
DISTRACTOR_SIZE = (0.03, 0.10)      # semi-axes, fraction of the image diagonal
DISTRACTOR_WOBBLE = 0.3             # the rim's radius varies by this fraction (smooth field)
# Distractors are unannotated things: VOC annotates every instance of its 20 classes, so they
# take the stuff's appearance (version 1 painted them in object textures and colours).
DISTRACTOR_CONTRAST = (0.04, 0.15)  # HSV value of the lighter colour over the darker
# Whole image.
ILLUMINATION = (0.0, 0.25)          # amplitude of a linear light gradient (multiplicative)
BLUR_SIGMA = (0.3, 0.9)             # pixels at render size
NOISE_SD = (2.0, 6.0)               # grey levels
SMOOTH_WAVES = 6                    # sinusoids summed into one smooth random field
GREY_LEVELS = 255.0


# ----- geometry -----------------------------------------------------------------------------------
def render_size(shape, scale):
    """(height, width) of the render of a mask of `shape`: round(scale x side), at least 1."""
    return tuple(max(1, int(round(side * scale))) for side in shape)


def downsample_mask(mask, size):
    """Nearest-neighbour resize of a class-index mask to size (h, w), pixel centres aligned:
    output pixel i takes input pixel floor((i + 0.5) x H / h)."""
    mask = np.asarray(mask)
    rows = np.minimum(((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]).astype(int), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def fill_void(mask):
    """The mask with every void (255) pixel set to its nearest labelled pixel's class (all
    background when nothing is labelled)."""
    void = mask == IGNORE_LABEL
    if not void.any():
        return mask
    if void.all():
        return np.zeros_like(mask)
    _, (rows, cols) = scipy.ndimage.distance_transform_edt(void, return_indices=True)
    return mask[rows, cols]


def image_rng(image_id):
    """The generator of one image: seeded with the generator version and the id's SHA-256."""
    digest = hashlib.sha256(str(image_id).encode()).digest()
    return np.random.default_rng([GENERATOR_VERSION, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


# ----- patterns -----------------------------------------------------------------------------------
def smooth_field(rng, yy, xx, period):
    """A smooth random field (about unit variance): SMOOTH_WAVES sinusoids of random direction,
    wavelength period x [0.7, 1.4] and phase."""
    field = np.zeros(yy.shape, np.float32)
    for _ in range(SMOOTH_WAVES):
        angle = rng.uniform(0, np.pi)
        wavelength = period * rng.uniform(0.7, 1.4)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / wavelength + phase)
    return field * np.float32(np.sqrt(2.0 / SMOOTH_WAVES))


def _soft(wave, sharpness=3.0):
    """A wave in [-1, 1] -> a pattern in [0, 1] with soft (anti-aliased) edges."""
    return np.clip(0.5 + sharpness * 0.5 * wave, 0.0, 1.0)


def texture(name, rng, yy, xx, period):
    """Pattern in [0, 1] (float32) of a texture family at a random orientation, on pixel grids
    yy, xx, with the given period in pixels."""
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    k = np.float32(2 * np.pi / period)
    if name == "flat":
        return np.full(yy.shape, 0.5, np.float32) + 0.15 * smooth_field(rng, yy, xx, 4 * period)
    if name == "stripes":
        return _soft(np.sin(k * u))
    if name == "checks":
        return _soft(np.sin(k * u) * np.sin(k * v) * 2.0)
    if name == "dots":
        return _soft((np.cos(k * u) * np.cos(k * v) - 0.4) * 2.0)
    if name == "grid":
        return _soft((np.maximum(np.abs(np.cos(k * u / 2)), np.abs(np.cos(k * v / 2))) - 0.85) * 8.0)
    if name == "fur":       # streaks along one direction: waves across it with jittered directions
        streaks = np.zeros(yy.shape, np.float32)
        for _ in range(4):
            tilt = rng.uniform(-0.25, 0.25)
            streaks += np.sin(k * rng.uniform(0.7, 1.4) * (v * np.cos(tilt) + u * np.sin(tilt))
                              + rng.uniform(0, 2 * np.pi))
        return _soft(streaks / 2.0, sharpness=1.5)
    if name == "blotches":
        return _soft(smooth_field(rng, yy, xx, 2.5 * period), sharpness=2.0)
    raise ValueError(f"unknown texture {name!r}; known: {TEXTURES}")


def _colour(hue, saturation, value):
    return hsv_to_rgb(hue, float(np.clip(saturation, 0, 1)), float(np.clip(value, 0, 1)))


def paint(pattern, dark, light):
    """H x W pattern in [0, 1] and two RGB colours -> H x W x 3 float32 image."""
    return dark + (light - dark) * pattern[:, :, None]


# ----- layers of the picture ----------------------------------------------------------------------
def background(rng, yy, xx, scale):
    """Stuff regions: a smooth random partition, each region its own low-contrast texture."""
    height, width = yy.shape
    side = max(height, width)
    count = int(rng.integers(STUFF_REGIONS[0], STUFF_REGIONS[1] + 1))
    fields = np.stack([smooth_field(rng, yy, xx, side * rng.uniform(*STUFF_PERIOD)) for _ in range(count)])
    region = fields.argmax(axis=0)
    image = np.empty((height, width, 3), np.float32)
    for k in range(count):
        hue, saturation, value = rng.uniform(0, 360), rng.uniform(*STUFF_SATURATION), rng.uniform(*STUFF_VALUE)
        dark = _colour(hue, saturation, value)
        light = _colour(hue, saturation, value + rng.uniform(*STUFF_CONTRAST))
        period = STUFF_TEXTURE_SCALE * scale * rng.uniform(*TEXTURE_PERIOD)
        pattern = texture(TEXTURES[rng.integers(len(TEXTURES))], rng, yy, xx, period)
        where = region == k
        image[where] = paint(pattern, dark, light)[where]
    return image


def distractors(rng, image, yy, xx, scale):
    """Unannotated things: blobs (ellipses with a wavy rim) in the stuff's colours and coarse,
    low-contrast textures; they stay background (the mask is not touched)."""
    height, width = yy.shape
    diagonal = float(np.hypot(height, width))
    for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ay, ax = rng.uniform(*DISTRACTOR_SIZE, size=2) * diagonal
        reach = max(ay, ax) * (1 + DISTRACTOR_WOBBLE)
        box = (slice(max(0, int(cy - reach)), min(height, int(cy + reach) + 1)),
               slice(max(0, int(cx - reach)), min(width, int(cx + reach) + 1)))
        if box[0].start >= box[0].stop or box[1].start >= box[1].stop:
            continue
        y, x = yy[box], xx[box]
        angle = rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        rim = 1.0 + DISTRACTOR_WOBBLE * np.clip(smooth_field(rng, y, x, min(ay, ax) + 1.0), -1, 1)
        where = (u / ax) ** 2 + (v / ay) ** 2 <= rim
        hue, saturation, value = rng.uniform(0, 360), rng.uniform(*STUFF_SATURATION), rng.uniform(*STUFF_VALUE)
        dark = _colour(hue, saturation, value)
        light = _colour(hue, saturation, value + rng.uniform(*DISTRACTOR_CONTRAST))
        period = STUFF_TEXTURE_SCALE * scale * rng.uniform(*TEXTURE_PERIOD)
        pattern = texture(TEXTURES[rng.integers(len(TEXTURES))], rng, y, x, period)
        image[box][where] = paint(pattern, dark, light)[where]


def instance_colours(rng, appearance, mode):
    """(dark, light) RGB colours of one instance in hue mode `mode` (0 or 1) of its class."""
    hue = appearance.hues[mode] + rng.normal(0, HUE_JITTER_SD)
    saturation, value = rng.uniform(*appearance.saturation), rng.uniform(*appearance.value)
    dark = _colour(hue, saturation, value)
    light = _colour(hue + rng.uniform(-LIGHT_HUE_SHIFT, LIGHT_HUE_SHIFT), saturation,
                    value + rng.uniform(*OBJECT_CONTRAST))
    return dark, light


def draw_instance(rng, image, where, box, label, yy, xx, scale):
    """Paint one instance of class `label` into image: `where` is its boolean mask within the
    box (a pair of slices of the image, one pixel wider than the instance where possible)."""
    appearance = CLASS_APPEARANCE[label - 1]
    y, x = yy[box], xx[box]
    mode = int(rng.integers(2))
    pattern = texture(appearance.texture, rng, y, x, scale * rng.uniform(*TEXTURE_PERIOD))
    painted = paint(pattern, *instance_colours(rng, appearance, mode))
    if rng.random() < PART_PROBABILITY:
        rows, cols = y[where], x[where]
        size = max(float(np.ptp(rows)), float(np.ptp(cols)), 1.0)
        angle = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(-PART_OFFSET, PART_OFFSET) * size / 2
        part = (x - cols.mean()) * np.cos(angle) + (y - rows.mean()) * np.sin(angle) > offset
        other = paint(pattern, *instance_colours(rng, appearance, 1 - mode))
        painted[part] = other[part]
    distance = scipy.ndimage.distance_transform_edt(where)
    shade = 1.0 - RIM_DARKEN * np.exp(-distance / (RIM_WIDTH * scale))
    shade *= 1.0 + OBJECT_SHADING * np.clip(smooth_field(rng, y, x, OBJECT_SHADING_PERIOD * scale), -1, 1)
    image[box][where] = (painted * shade[:, :, None])[where]


def _padded(box, shape):
    """A pair of slices grown by one pixel on each side, within an image of `shape`."""
    return tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(box, shape))


def render(mask, image_id, scale=DEFAULT_SCALE):
    """One stand-in photograph: (image h x w x 3 uint8 RGB, mask h x w uint8) from a full-size
    class-index mask (0..20, 255 void), h, w = render_size(mask.shape, scale)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"need an H x W class-index mask, got shape {mask.shape}")
    bad = (mask >= NUM_CLASSES) & (mask != IGNORE_LABEL)
    if bad.any():
        raise ValueError(f"mask value {int(mask[bad][0])} is neither a class 0..{NUM_CLASSES - 1} nor {IGNORE_LABEL}")
    small = downsample_mask(mask, render_size(mask.shape, scale)).astype(np.uint8)
    rng = image_rng(image_id)
    yy, xx = np.mgrid[0:small.shape[0], 0:small.shape[1]].astype(np.float32)
    image = background(rng, yy, xx, scale)
    distractors(rng, image, yy, xx, scale)
    filled = fill_void(small)
    for label in range(1, NUM_CLASSES):
        regions, _ = scipy.ndimage.label(filled == label)
        for k, box in enumerate(scipy.ndimage.find_objects(regions), start=1):
            box = _padded(box, regions.shape)
            draw_instance(rng, image, regions[box] == k, box, label, yy, xx, scale)
    angle, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(*ILLUMINATION)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / max(small.shape)
    image *= (1.0 + amplitude * (ramp - ramp.mean()))[:, :, None]
    sigma = rng.uniform(*BLUR_SIGMA)
    image = scipy.ndimage.gaussian_filter(image, (sigma, sigma, 0))
    image += rng.normal(0, rng.uniform(*NOISE_SD), size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, GREY_LEVELS).astype(np.uint8), small


# ----- the folder ---------------------------------------------------------------------------------
def parameters(scale):
    """What decides the pixels: compared with an existing folder's manifest."""
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "scale": float(scale),
            "jpeg_quality": JPEG_QUALITY, "classes": list(VOC_CLASSES)}


def read_ids(path):
    """Image ids of a list file, one per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list not found: {path}")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if any(len(i.split()) != 1 for i in ids):
        raise ValueError(f"{path}: need one image id per line")
    return ids


def extract_masks(tar_path, dest):
    """Unpack voc12_masks.tar.gz (its top folder voc12/) into dest, unless dest already holds
    its id lists and mask folder; returns the folder holding SegmentationClassAug/."""
    dest = Path(dest)
    folder = dest / "voc12"
    if all((folder / f"{split}.txt").is_file() for split in SPLITS) and (folder / MASK_FOLDER).is_dir():
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as archive:
        archive.extractall(dest, filter="data")
    if not (folder / MASK_FOLDER).is_dir():
        raise FileNotFoundError(f"{tar_path} holds no voc12/{MASK_FOLDER}/")
    return folder


def _save_atomic(path, write):
    """write(temporary path beside path), then rename the file over path: a file of the folder
    is either missing or whole, so an interrupted render resumes safely."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _render_one(job):
    """Render and write one id (runs in worker processes)."""
    masks, out, image_id, scale = job
    source = Path(masks) / MASK_FOLDER / f"{image_id}.png"
    if not source.is_file():
        raise FileNotFoundError(f"no mask {source} for id {image_id}")
    image, small = render(np.asarray(Image.open(source)), image_id, scale)
    _save_atomic(Path(out) / MASK_FOLDER / f"{image_id}.png", lambda tmp: save_palette_png(small, tmp))
    _save_atomic(Path(out) / "JPEGImages" / f"{image_id}.jpg",
                 lambda tmp: Image.fromarray(image).save(tmp, format="JPEG", quality=JPEG_QUALITY))
    return image_id


def _done(out, image_id):
    return all((Path(out) / sub / f"{image_id}.{ext}").is_file()
               for sub, ext in (("JPEGImages", "jpg"), (MASK_FOLDER, "png")))


def render_folder(masks, out, scale=DEFAULT_SCALE, splits=None, workers=1, progress=False):
    """Render every id of `splits` ({split: [ids]}, default: the mask folder's train_aug.txt and
    val.txt) into the VOC-layout folder `out`; returns the manifest. Resumes an interrupted
    render of the same parameters; other parameters render every image again."""
    masks, out = Path(masks), Path(out)
    if splits is None:
        splits = {split: read_ids(masks / f"{split}.txt") for split in SPLITS}
    wanted = parameters(scale)
    manifest_path = out / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    keep = old.get("parameters") == wanted
    counts = {split: len(ids) for split, ids in splits.items()}
    if keep and old.get("complete") and old.get("counts") == counts:
        return old
    for sub in ("JPEGImages", MASK_FOLDER, "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest = {"parameters": wanted, "masks": str(masks.resolve()), "counts": counts, "complete": False}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    ids = [i for split_ids in splits.values() for i in split_ids]
    todo = [i for i in dict.fromkeys(ids) if not (keep and _done(out, i))]
    jobs = [(str(masks), str(out), image_id, scale) for image_id in todo]
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="render", unit="img", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_render_one, jobs, chunksize=IDS_PER_CHUNK):
                bar.update(1)
    else:
        for job in jobs:
            _render_one(job)
            bar.update(1)
    bar.close()
    for split, split_ids in splits.items():
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    manifest["complete"] = True
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def build_parser():
    parser = argparse.ArgumentParser(description="Render stand-in photographs for PASCAL VOC 2012 from its real masks.")
    parser.add_argument("--masks", type=Path, default=Path("generated/voc12"),
                        help=f"folder holding {MASK_FOLDER}/ and the id lists train_aug.txt, val.txt")
    parser.add_argument("--tar", type=Path, help="voc12_masks.tar.gz: unpacked into the parent of --masks first "
                        "(when --masks is not there yet)")
    parser.add_argument("--out", type=Path, default=Path("generated/voc_shapes"), help="output VOC-layout folder")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                        help=f"render size / mask size (default {DEFAULT_SCALE:.4f})")
    parser.add_argument("--limit", type=int, help="render only the first N ids of each list (a quick look)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes (the pixels do not depend on it)")
    return parser


def main(args):
    if not 0 < args.scale <= 1:
        print(f"voc_render: --scale must be in (0, 1], got {args.scale}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"voc_render: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    try:
        masks = extract_masks(args.tar, args.masks.parent) if args.tar else args.masks
        splits = {split: read_ids(masks / f"{split}.txt")[:args.limit] for split in SPLITS}
    except (OSError, ValueError, tarfile.TarError) as err:
        print(f"voc_render: {err}", file=sys.stderr)
        return 2
    manifest = render_folder(masks, args.out, args.scale, splits, max(1, args.workers), progress=True)
    print(f"{sum(manifest['counts'].values())} images in {args.out} ({GENERATOR} version {GENERATOR_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
