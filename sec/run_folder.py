"""A training run's folder: what is already there, what a new run may replace, which snapshot a
resume starts from, and the checks of the run's inputs before its first iteration.

Files of run `<name>` in its folder: `<name>_iter_<N>.caffemodel`, `.solverstate`,
`.solverstate.rng` (snapshots; with the solver's `snapshot_format: HDF5` `.caffemodel.h5`,
`.solverstate.h5`, `.solverstate.h5.rng`: a resume takes the newest iteration whatever its format),
`losses.csv`, `losses.png`, `train.log`, `eval.json`, `panels.png`;
hidden `.<file>.<hex>.tmp` files are atomic writes in progress (sec.caffe.formats.atomic_write_bytes)
or left behind by a killed process.
"""
import argparse
import errno
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import yaml

from sec import data

log = logging.getLogger(__name__)

# Snapshot names, as sec.caffe.snapshots.snapshot_paths writes them (kept here so that this module
# does not import the engine; tests/test_train.py checks that the two agree).
RNG_SIDECAR_SUFFIX = ".rng"   # <solverstate>.rng: RNG states and data order
HDF5_SUFFIX = ".h5"           # snapshot_format: HDF5 appends it to the weights and the solver state
STATE_SUFFIXES = (".solverstate", ".solverstate" + HDF5_SUFFIX)          # BINARYPROTO, HDF5
SNAPSHOT_SUFFIXES = ((".caffemodel", ".caffemodel" + HDF5_SUFFIX) + STATE_SUFFIXES
                     + tuple(suffix + RNG_SIDECAR_SUFFIX for suffix in STATE_SUFFIXES))
RUN_RECORDS = ("losses.csv", "losses.png", "eval.json", "panels.png", "train.log")
EXAMPLES = 3                  # offending entries quoted in an input error
# A full disk or quota, a read-only file system, no permission.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class RunInputError(ValueError):
    """A run's input (flag, list, image, cue file, run folder) that training cannot use."""


def _named(run_dir, name, suffix):
    """[(N, path)] of the files `<name>_iter_<N><suffix>` in run_dir (N digits only)."""
    head, found = f"{name}_iter_", []
    for path in Path(run_dir).glob(f"{head}*{suffix}"):
        number = path.name[len(head):len(path.name) - len(suffix)]
        if number.isdigit():
            found.append((int(number), path))
    return found


def snapshots(run_dir, name):
    """[(iteration, solver state path)] of run `name` in run_dir, .solverstate and .solverstate.h5
    alike, newest first: the highest iteration, and at the same iteration the file written last."""
    found = [entry for suffix in STATE_SUFFIXES for entry in _named(run_dir, name, suffix)]
    return sorted(found, key=lambda entry: (entry[0], entry[1].stat().st_mtime_ns), reverse=True)


def latest_snapshot(run_dir, name):
    """The solver state (.solverstate or .solverstate.h5) with the highest iteration in run_dir, or None."""
    found = snapshots(run_dir, name)
    return found[0][1] if found else None


def resume_snapshot(run_dir, name):
    """latest_snapshot, or RunInputError naming --resume when run `name` has none in run_dir."""
    state = latest_snapshot(run_dir, name)
    if state is None:
        raise RunInputError(f"--resume: no {name}_iter_*{STATE_SUFFIXES[0]} (nor {STATE_SUFFIXES[1]}) in {run_dir}")
    return state


def snapshot_files(run_dir, name):
    """Every snapshot file of run `name` (both formats: weights, solver state, .rng sidecar), sorted."""
    return sorted({path for suffix in SNAPSHOT_SUFFIXES for _, path in _named(run_dir, name, suffix)})


def remove_stale_temporaries(run_dir, name):
    """Delete `.<name>_*.tmp` files in run_dir (atomic writes of a process that was killed: only
    one process trains a run at a time); returns how many were removed."""
    removed = 0
    for path in Path(run_dir).glob(f".{name}_*.tmp"):
        path.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("Removed %d stale temporary file(s) of an interrupted snapshot in %s", removed, run_dir)
    return removed


def prepare_new_run(run_dir, name, overwrite, runs_root=None):
    """Before a run that does not resume: refuse (RunInputError naming --resume and --overwrite)
    when run_dir already holds snapshots or a losses.csv of `name`; with overwrite, delete them
    and the run's records, and runs/latest.json when it names one of the deleted files.
    Returns the deleted paths."""
    run_dir = Path(run_dir)
    old = snapshot_files(run_dir, name)
    records = [run_dir / f for f in RUN_RECORDS if (run_dir / f).is_file()]
    if not old and not (run_dir / "losses.csv").is_file():
        return []
    if not overwrite:
        newest = latest_snapshot(run_dir, name)
        what = (f"snapshots up to {newest.name}); pass --resume to continue it, " if newest else
                "a losses.csv but no snapshot to resume from); pass ")
        raise RunInputError(f"{run_dir} already holds run '{name}' ({what}--overwrite to delete it and start "
                            "again, or --name (or --runs) for a new run beside it")
    deleted = old + records
    latest = Path(runs_root) / "latest.json" if runs_root is not None else None
    if latest is not None and latest.is_file():
        named = _latest_weights(latest)
        if named is not None and any(named == path.resolve() for path in deleted):
            deleted.append(latest)
    for path in deleted:
        path.unlink()
    return deleted


def _latest_weights(path):
    import json
    try:
        return Path(json.loads(Path(path).read_text())["weights"]).resolve()
    except (ValueError, KeyError, TypeError, OSError):
        return None


# ----- flag types (argparse names the flag and exits with status 2 on a bad value) --------------
MAX_SEED = 2 ** 63 - 1        # Caffe's SolverParameter.random_seed is an int64
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A run name: one plain path component (no separator, not hidden, not '..', no option-like dash)."""


def _integer(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"need an integer, got {text!r}") from None


def positive_int(text):
    """argparse type for counts (--iters, --batch, ...): an integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"need a positive integer, got {value}")
    return value


def nonnegative_int(text):
    """argparse type for counts where 0 means none or automatic (--workers)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"need an integer >= 0, got {value}")
    return value


def caffe_seed(text):
    """argparse type for --seed: Caffe's random_seed, an integer in 0..2**63-1."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"need an integer in 0..{MAX_SEED} (Caffe's random_seed is a "
                                         f"64-bit integer), got {value}")
    return value


def float_in(low, high, high_open=False):
    """argparse type: a finite number in [low, high] (or [low, high) with high_open)."""
    interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"need a number in {interval}, got {text!r}") from None
        if not (math.isfinite(value) and low <= value and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"need a number in {interval}, got {text}")
        return value
    return parse


def run_name(text):
    """argparse type for --name: a plain name, so that the run stays inside --runs."""
    if not RUN_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"need a plain name (letters, digits, '.', '_', '-'; starting with a letter or digit; no "
            f"'/'), got {text!r}: the run folder is <--runs>/<name>")
    return text


def check_writable_folder(folder, flag):
    """Create `folder` (and its parents) and check that it takes new files, before any work is
    done; RunInputError naming the flag otherwise (a read-only or full file system, no permission)."""
    from sec.deploy_files import folder_write_problem
    problem = folder_write_problem(folder)
    if problem is not None:
        raise RunInputError(f"{flag}: {problem}")
    return Path(folder)


def describe_os_error(err, folder=None):
    """One line for an OSError met while a run writes its files: the reason and the file (or, when
    the error does not name one, as for a full disk met while writing, the run's `folder`)."""
    if err.filename:
        where = err.filename
    else:
        where = f"into {folder}" if folder is not None else "the run's files"
    what = "cannot write" if err.errno in WRITE_ERRNOS else "error on"
    return f"{what} {where}: {err.strerror or err}"


def check_iterations(iters, batch):
    """--iters and --batch must be positive when given."""
    for flag, value in (("--iters", iters), ("--batch", batch)):
        if value is not None and value < 1:
            raise RunInputError(f"{flag}: need a positive number, got {value}")


# ----- the inputs of a train net ----------------------------------------------------------------
def check_image_list(source, root_folder):
    """Every image of the list exists under root_folder (joined as the ImageData reader does);
    returns the entries [(image, id, line)]. Raises RunInputError naming the list and examples."""
    try:
        entries = data.read_image_list(source)
    except data.ImageListError as err:
        raise RunInputError(str(err)) from None
    missing = [(line, image) for image, _, line in entries
               if not os.path.isfile(os.path.join(str(root_folder or ""), image))]
    if missing:
        examples = ", ".join(f"line {line}: {image}" for line, image in missing[:EXAMPLES])
        raise RunInputError(f"{source}: {len(missing)} of {len(entries)} images not found under "
                            f"'{root_folder or '.'}' ({examples})")
    return entries


def load_cue_file(path):
    """The cue pickle's dict; RunInputError naming the file when it cannot be read."""
    from pylayers import cues as pycues
    if not Path(path).is_file():
        raise RunInputError(f"cue file {path} not found")
    try:
        return pycues.load_cues(str(path))
    except Exception as err:  # a damaged pickle raises nearly any exception type
        raise RunInputError(f"{path}: not a readable cue pickle ({type(err).__name__}: {err})") from None


def check_cues(path, entries, source, num_classes, cue_size):
    """Every id of the list has valid labels and cues in the cue file; returns the file's dict."""
    from pylayers import cues as pycues
    cues = load_cue_file(path)
    bad = []
    for _, image_id, line in entries:
        try:
            pycues.image_labels_and_cues(cues, image_id, num_classes, cue_size, source=str(path))
        except (KeyError, ValueError, TypeError, IndexError) as err:
            reason = err.args[0] if isinstance(err, KeyError) and err.args else err
            bad.append(f"{source}:{line} id {image_id}: {reason}")
    if bad:
        raise RunInputError(f"{path}: {len(bad)} of the {len(entries)} ids of {source} have no valid cues "
                            f"(first: {'; '.join(bad[:EXAMPLES])})")
    return cues


def check_train_net_inputs(netparam):
    """Before the first iteration: the lists, images and cue files a train NetParameter (overrides
    applied) reads: every image of every ImageData list exists and every id has cues in the file
    of each AnnotationLayer. Raises RunInputError; returns [(list, its entries, cue file, its dict)]."""
    from pylayers.layers import AnnotationLayer
    lists = [(layer.image_data_param.source, layer.image_data_param.root_folder)
             for layer in netparam.layer if layer.type == "ImageData"]
    entries = [(source, check_image_list(source, root)) for source, root in lists]
    checked = []
    for layer in netparam.layer:
        if layer.type != "Python" or layer.python_param.layer != "AnnotationLayer":
            continue
        params = dict(AnnotationLayer.defaults)
        params.update(yaml.safe_load(layer.python_param.param_str or "{}") or {})
        for source, listed in entries:
            cues = check_cues(params["cues"], listed, source, int(params["num_classes"]), int(params["cue_size"]))
            checked.append((source, listed, params["cues"], cues))
    return checked


# ----- do the cue ids name this list's images? ------------------------------------------------------
PAIRING_SAMPLE = 100          # list entries (evenly spaced) whose cue labels are compared with their masks
MIN_PAIRING_AGREEMENT = 0.5   # right pairing: 99.25 % on VOC train_aug (the authors' cues); wrong: 3.9 %
AUTHORS_IDS = 10582           # the authors' localization_cues.pickle: ids 0..10581, VOC train_aug in the
                              # order of their input_list.txt


def check_cue_pairing(cues, cues_path, entries, source, mask_of, num_classes, list_written=False):
    """The cue pickle pairs ids with images by the list; a list of another order gives every image
    another image's cues, which no loss notices. Where ground-truth masks are at hand (mask_of:
    image file -> mask path or None), the '<id>_labels' of up to PAIRING_SAMPLE entries spread over
    the list must equal their masks' foreground classes for at least MIN_PAIRING_AGREEMENT of them.
    Without masks, a list written here (list_written) and a pickle whose ids are exactly
    0..AUTHORS_IDS-1 (the authors' cues, numbered in the order of their input_list.txt) are refused.
    RunInputError naming --list; returns a note when the pairing could not be checked, else None."""
    from PIL import Image

    from sec.localization import mask_classes
    picks = np.unique(np.linspace(0, len(entries) - 1, min(len(entries), PAIRING_SAMPLE)).astype(int))
    compared, disagree = 0, []
    for index in picks:
        image_file, image, line = entries[index]
        path = mask_of(image_file)
        if path is None:
            continue
        try:
            truth = mask_classes(np.asarray(Image.open(path)), num_classes)
        except (OSError, ValueError):
            continue   # an unreadable or foreign mask says nothing about the pairing
        compared += 1
        labels = np.unique(np.asarray(cues[f"{image}_labels"], np.int64))
        if not np.array_equal(labels, truth):
            disagree.append(f"{source}:{line} {image_file} id {image}: cues say {labels.tolist()}, "
                            f"{Path(path).name} holds {truth.tolist()}")
    how = ("the list written from the dataset's split numbers its images 0..N-1 in the split's order"
           if list_written else f"{source} is not the list the cues were made with")
    remedy = ("pass the list the cues were made with as --list (for the authors' localization_cues.pickle: "
              "their input_list.txt)")
    if compared and (compared - len(disagree)) / compared < MIN_PAIRING_AGREEMENT:
        raise RunInputError(f"{cues_path}: the image-level labels of {len(disagree)} of {compared} sampled ids "
                            f"differ from their ground-truth masks (e.g. {'; '.join(disagree[:2])}), so the cue "
                            f"ids do not name these images: {how}; {remedy}")
    if compared or not list_written:
        return None
    ids = {key[:-len("_labels")] for key in cues if isinstance(key, str) and key.endswith("_labels")}
    if ids == {str(i) for i in range(AUTHORS_IDS)}:
        raise RunInputError(f"{cues_path}: ids 0..{AUTHORS_IDS - 1}, as in the authors' localization_cues.pickle, "
                            f"whose ids follow their input_list.txt, not {source}: {how}; {remedy}")
    return (f"note: no ground-truth masks for the images of {source}, so whether the ids of {cues_path} name "
            "these images could not be checked")


def restore_newest_readable(solver, run_dir, name):
    """Restore the newest snapshot of `name` that reads (either format); a damaged newer one is
    skipped with a warning. Returns (state used, [(skipped state, reason)]); RunInputError when none reads."""
    resume_snapshot(run_dir, name)
    skipped = []
    for _, state in snapshots(run_dir, name):
        try:
            solver.restore(str(state))
            return state, skipped
        except (ValueError, FileNotFoundError) as err:  # CaffeFormatError, SnapshotError, shapes
            log.warning("Skipping snapshot %s: %s", state, err)
            skipped.append((state, str(err)))
    reasons = "; ".join(f"{Path(s).name}: {r}" for s, r in skipped)
    raise RunInputError(f"--resume: no readable snapshot in {run_dir} ({reasons})")


def missing_sidecar_note(state):
    """The warning for a resume from a solver state without its .rng sidecar, or None."""
    sidecar = Path(str(state) + RNG_SIDECAR_SUFFIX)
    if sidecar.is_file():
        return None
    return (f"--resume: WARNING: {sidecar.name} is missing, so the RNG states and the data order are not restored "
            "(they restart from the seed): the resumed run will not follow the uninterrupted one")


def require_some_weights(report, path):
    """Initial weights that fill no parameter layer at all are a mistake (wrong file or net)."""
    if not report.loaded:
        raise RunInputError(f"--weights {path}: no layer of the file matches a parameter layer of the net "
                            f"by name (file layers: {', '.join(report.ignored[:8]) or 'none'})")
