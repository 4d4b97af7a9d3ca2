"""The files of a deploy run: which images, which outputs, written how, and what made them.

- Inputs: image files directly in a folder (`list_images`), checked from their headers before
  any model is loaded (`check_image_header`).
- Outputs per image (`Outputs`, `output_paths`): `<out>/<name>.png`, `<out>/overlay/<name>.jpg`,
  `<out>/probs/<name>.npz`; each written by `atomic_save` (hidden temporary name, then rename).
- `<out>/deploy_manifest.json` (MANIFEST_NAME): JSON {"format": 1, "options": {...},
  "overwrite_in_progress": bool}, the options that decide what a mask holds (the weights and
  prototxt by SHA-256 of their bytes, the score blob, the CRF settings, the test-time
  augmentation when used; see
  sec.deploy.mask_options). A run whose options differ from the recorded ones is refused unless
  overwrite, since the masks already there would otherwise be kept as done; an --overwrite run
  that changes the options marks the folder until it has rewritten every image (`claim`).
"""
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")
OVERLAY_DIR = "overlay"
PROBS_DIR = "probs"
MANIFEST_NAME = "deploy_manifest.json"
MANIFEST_FORMAT = 1
# The options that decide a mask's content; the paths beside the digests are for the reader.
DECIDING_OPTIONS = ("weights_sha256", "prototxt_sha256", "output_blob", "crf", "tta")
# Which readable option to name when a deciding one changed.
SHOWN_AS = {"weights_sha256": "weights", "prototxt_sha256": "prototxt"}
HASH_CHUNK = 1 << 20


class DeployError(Exception):
    """A problem with the model, the folders or the options; the message says what to do."""


def list_images(folder):
    """Image files directly in `folder` (by extension, any case), sorted; hidden files skipped.

    Broken symbolic links with an image extension are listed too, so that they are reported as
    failed files rather than skipped without a word."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DeployError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() or (p.is_symlink() and not p.exists()))
                  and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def check_image_header(path, max_pixels=None):
    """Why `path` cannot be deployed, read from its header only (cheap), or None.

    Finds missing files, broken links, files Pillow cannot identify and, with max_pixels (the
    CRF's limit), images with more pixels than that; truncated image data is found at decode."""
    path = Path(path)
    if not path.is_file():
        return (f"broken symbolic link: {path} -> {os.readlink(path)}" if path.is_symlink()
                else f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"cannot decode image {path}: {err}"
    if max_pixels is not None and width * height > max_pixels:
        return (f"{path}: {width}x{height} = {width * height} pixels, more than the CRF's limit of "
                f"{max_pixels} (2**26) per image; deploy it without --crf or downscale it")
    return None


def check_output_folder(out_dir, overlay=False, probs=False):
    """Create `out_dir` (and the overlay/probs folders asked for) and check it takes files;
    DeployError naming the folder otherwise."""
    out_dir = Path(out_dir)
    folders = [out_dir] + [out_dir / sub for sub, wanted in ((OVERLAY_DIR, overlay),
                                                             (PROBS_DIR, probs)) if wanted]
    for folder in folders:
        problem = folder_write_problem(folder)
        if problem is not None:
            raise DeployError(f"--out: {problem}")


def folder_write_problem(folder):
    """Create `folder` (and its parents) and try a temporary file in it: None when it takes files,
    else why not ("X exists and is not a folder", "cannot write into X: reason")."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{folder} exists and is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"cannot write into {folder}: {err.strerror or err}"
    return None


@dataclass
class Outputs:
    """The files one image produces; None for an output that was not asked for."""
    mask: Path
    overlay: Path = None
    probs: Path = None

    def wanted(self):
        return [p for p in (self.mask, self.overlay, self.probs) if p is not None]

    def done(self):
        return all(p.is_file() for p in self.wanted())


def output_paths(images, out_dir, overlay=False, probs=False):
    """Outputs for each image path; DeployError when two images would write the same mask."""
    out_dir = Path(out_dir)
    by_name = {}
    for image in images:
        by_name.setdefault(image.stem, []).append(image)
    clashes = [names for names in by_name.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(", ".join(p.name for p in names) for names in clashes)
        raise DeployError(f"images with the same base name would write the same mask: {listed}. "
                          f"Rename them or deploy them into different --out folders.")
    return [Outputs(out_dir / f"{image.stem}.png",
                    out_dir / OVERLAY_DIR / f"{image.stem}.jpg" if overlay else None,
                    out_dir / PROBS_DIR / f"{image.stem}.npz" if probs else None)
            for image in images]


def atomic_save(path, save):
    """Call save(tmp_path) on a hidden sibling of `path` with the same suffix, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_sha256(path):
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(out_dir):
    """The manifest dict of `out_dir`, or None when there is none; DeployError when unreadable."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("options"), dict):
            raise ValueError("no 'options' object")
    except (OSError, ValueError) as err:
        raise DeployError(f"{path}: unreadable deploy manifest ({err}); delete it and rerun "
                          f"with --overwrite") from err
    return manifest


def _write_manifest(path, options, overwrite_in_progress):
    text = json.dumps({"format": MANIFEST_FORMAT, "options": options,
                       "overwrite_in_progress": overwrite_in_progress}, indent=1)
    atomic_save(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


@dataclass
class Claim:
    """A run's right to write into an output folder (from `claim`). record() writes the
    manifest, once, before the run's first output (so a run that fails before writing anything,
    a model that does not load, leaves the folder as it was); finish() records that an
    overwriting run rewrote every image."""
    path: Path
    options: dict
    overwriting: bool
    recorded: bool = False

    def record(self):
        if not self.recorded:
            _write_manifest(self.path, self.options, self.overwriting)
            self.recorded = True

    def finish(self, complete):
        if self.recorded and self.overwriting and complete:
            _write_manifest(self.path, self.options, False)
            self.overwriting = False


def _changes(old, new):
    shown = []
    for key in DECIDING_OPTIONS:
        if old.get(key) != new.get(key):
            name = SHOWN_AS.get(key, key)
            shown.append(f"{name}: {old.get(name)} -> {new.get(name)}")
    return shown


def claim(out_dir, options, outputs, overwrite):
    """Check `options` against the manifest of `out_dir`; returns a Claim (not yet recorded).

    outputs: the Outputs of this run's images. DeployError, naming --overwrite, when outputs
    exist that other options made (or that no manifest accounts for), or when an earlier
    --overwrite run that changed the options did not finish."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST_NAME
    old = read_manifest(out_dir)
    existing = [o for o in outputs if any(p.is_file() for p in o.wanted())]
    if old is None:
        if existing and not overwrite:
            raise DeployError(
                f"{out_dir} already holds outputs of {len(existing)} of these images (e.g. "
                f"{existing[0].mask.name}) but no {MANIFEST_NAME}, so what made them is unknown: "
                f"pass --overwrite to replace them, or choose another --out")
        overwriting = bool(existing)
    else:
        changes = _changes(old["options"], options)
        unfinished = bool(old.get("overwrite_in_progress"))
        if changes and not overwrite:
            raise DeployError(
                f"{out_dir} holds outputs made with other options ({'; '.join(changes)}; see "
                f"{path}): pass --overwrite to replace them, or choose another --out")
        if unfinished and not overwrite:
            raise DeployError(
                f"an --overwrite run into {out_dir} that changed the options did not finish, so "
                f"some outputs there may still be from the earlier options: rerun with "
                f"--overwrite")
        overwriting = bool(changes) or unfinished
    return Claim(path, options, overwriting)
