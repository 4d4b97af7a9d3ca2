"""The data part of bench/caffe_reference.py (`--only data`): Caffe's data layers and data tools,
run by the real BVLC Caffe on tiny files, written to tests/fixtures/caffe/data.json + data.npz.

Everything a case needs is in the fixture, so tests/test_caffe_data_reference.py rebuilds it without
Caffe: `files` (relative path -> array key of its bytes: PNG/JPEG images written with Pillow, lists,
a window file, the mean .binaryproto written by Caffe's compute_image_mean), `h5` (HDF5 files as
{dataset: array key}, written with h5py), `dbs` (LMDB / LevelDB data sets as Caffe's
convert_imageset wrote them: their records, [key, array key of the value bytes]). Prototxts name
that folder `@ROOT@`. Per case: the net, phase, Caffe's random seed (caffe.set_random_seed before
the net is built), and the tops of each forward pass. Also: each convert_imageset run (flags and
records) and compute_image_mean's output and log.
"""
import io
import os
import subprocess
from pathlib import Path

import numpy as np

IMAGE_HW = (10, 12)
ODD_HW = (11, 9)
IMAGES = {"im0.png": 3, "im1.png": 1, "im2.jpg": 4, "im3.png": 1}      # file -> label
JPEG_QUALITY = 90
CONVERTS = {                          # DB name -> convert_imageset flags (list.txt, LMDB unless named)
    "raw": [],
    "resized": ["--resize_height=8", "--resize_width=8"],
    "resized_leveldb": ["--resize_height=8", "--resize_width=8", "--backend=leveldb"],
    "gray": ["--gray", "--resize_height=8", "--resize_width=8"],
    "encoded": ["--encoded"],
    "reencoded": ["--encode_type=png", "--resize_height=7", "--resize_width=9"],
    # Caffe keeps a PNG's own (colour) bytes under --gray when no re-encoding is needed; the JPEG
    # becomes a grey PNG: force_color decodes both to 3 channels.
    "gray_encoded": ["--gray", "--encode_type=png"],
}
MEAN_DB = "raw"


def data_layer(source, backend, batch, transform, tops=("data", "label"), extra=""):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return (f'layer {{ name: "d" type: "Data" {top_text} transform_param {{ {transform} }} '
            f'data_param {{ source: "@ROOT@/{source}" backend: {backend} batch_size: {batch} {extra} }} }}\n')


def image_data_layer(source, batch, transform, extra=""):
    return (f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'image_data_param {{ source: "@ROOT@/{source}" root_folder: "@ROOT@/" batch_size: {batch} {extra} }} }}\n')


def window_layer(batch, transform, extra):
    return (f'layer {{ name: "d" type: "WindowData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'window_data_param {{ source: "@ROOT@/windows.txt" root_folder: "@ROOT@/" batch_size: {batch} '
            f'fg_threshold: 0.5 bg_threshold: 0.3 fg_fraction: 0.5 {extra} }} }}\n')


MEAN = "mean_file: \"@ROOT@/mean.binaryproto\""
# name -> (prototxt, phase, Caffe's random seed, forward passes)
CASES = {
    "data_lmdb_test_crop_mean_file_scale": (data_layer("raw", "LMDB", 3, f"crop_size: 6 {MEAN} scale: 0.5"),
                                            "TEST", 1, 3),
    "data_lmdb_train_crop_mirror": (data_layer("resized", "LMDB", 2, "crop_size: 5 mirror: true mean_value: 100 "
                                               "mean_value: 110 mean_value: 120"), "TRAIN", 7, 4),
    "data_leveldb_test_mirror_one_top": (data_layer("resized_leveldb", "LEVELDB", 2, "mirror: true", tops=("data",)),
                                         "TEST", 3, 3),
    "data_encoded_force_gray": (data_layer("encoded", "LMDB", 2, "force_gray: true"), "TEST", 1, 2),
    "data_gray_train_crop": (data_layer("gray", "LMDB", 2, "crop_size: 4"), "TRAIN", 5, 2),
    "data_gray_encoded_force_color": (data_layer("gray_encoded", "LMDB", 4, "force_color: true"), "TEST", 1, 1),
    "data_reencoded_scale": (data_layer("reencoded", "LMDB", 2, "scale: 0.25"), "TEST", 1, 2),
    "data_gray_mean_value": (data_layer("gray", "LMDB", 4, "mean_value: 50"), "TEST", 1, 1),
    "image_data_test_crop_mean_file_scale": (image_data_layer("list.txt", 2, f"crop_size: 6 {MEAN} scale: 0.5"),
                                             "TEST", 1, 3),
    "image_data_train_shuffle_crop_mirror": (image_data_layer("list.txt", 3, "crop_size: 7 mirror: true",
                                                              "shuffle: true"), "TRAIN", 11, 4),
    "image_data_gray_rand_skip_resize": (image_data_layer("list.txt", 2, "mean_value: 9",
                                                          "is_color: false rand_skip: 3 new_height: 6 new_width: 7"),
                                         "TEST", 5, 3),
    "image_data_odd_sizes_no_resize": (image_data_layer("list_odd.txt", 1, ""), "TEST", 1, 3),
    "window_data_train_warp_pad_mirror": (window_layer(4, "crop_size: 6 mirror: true mean_value: 90 mean_value: 100 "
                                                       "mean_value: 110", "context_pad: 1 scale: 0.5"), "TRAIN", 13, 3),
    "window_data_test_square_mean_file_cached": (window_layer(3, f"crop_size: 6 {MEAN}",
                                                              "crop_mode: \"square\" cache_images: true"),
                                                 "TEST", 2, 2),
    "hdf5_data_two_files": ('layer { name: "d" type: "HDF5Data" top: "data" top: "label" '
                            'hdf5_data_param { source: "@ROOT@/h5list.txt" batch_size: 2 } }\n', "TEST", 1, 4),
}
# Window file entries: image index -> [(label, overlap, x1, y1, x2, y2)] (inclusive corners; 10 x 12 images).
WINDOWS = {
    0: [(1, 0.8, 2, 1, 9, 7), (0, 0.1, 0, 0, 11, 9), (2, 0.4, 3, 3, 6, 6)],
    1: [(3, 0.6, 5, 2, 11, 9), (0, 0.2, 1, 4, 4, 8)],
    2: [(2, 0.9, 0, 0, 5, 5), (0, 0.0, 6, 5, 10, 9)],
    3: [(1, 0.5, 4, 0, 8, 4)],
}
HDF5_FILES = {"a.h5": (3, np.float64, np.int32), "b.h5": (2, np.float32, np.float32)}   # rows, data and label types
HDF5_ROW = (2, 1, 3)
MEMORY = dict(batch=2, shape=(6, 2, 3, 4), forwards=4)
OUTPUT = dict(data=(2, 3, 2, 2), label=(2,))


def image_bytes(bgr, suffix):
    """A BGR uint8 image as PNG or JPEG file bytes (Pillow: the same bytes on every run)."""
    from PIL import Image
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY) if suffix == "jpg" else image.save(buffer, format="PNG")
    return buffer.getvalue()


def window_file():
    lines = []
    for index, name in enumerate(IMAGES):
        lines += ["#", str(index), name, "3", str(IMAGE_HW[0]), str(IMAGE_HW[1]), str(len(WINDOWS[index]))]
        lines += [" ".join(map(str, w)) for w in WINDOWS[index]]
    return "\n".join(lines) + "\n"


def lmdb_records(path):
    import lmdb
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    env.close()
    return records


def as_array(data):
    return np.frombuffer(data, dtype=np.uint8).copy()


def write_files(root, rng, arrays):
    """The images, lists, window file and HDF5 files in `root`; returns (files, h5) manifests."""
    import h5py
    files = {}
    contents = {}
    for name in IMAGES:
        contents[name] = image_bytes(rng.integers(0, 256, IMAGE_HW + (3,), dtype=np.uint8), name[-3:])
    contents["odd.png"] = image_bytes(rng.integers(0, 256, ODD_HW + (3,), dtype=np.uint8), "png")
    contents["list.txt"] = "".join(f"{name} {label}\n" for name, label in IMAGES.items()).encode()
    contents["list_odd.txt"] = b"im0.png 3\nodd.png 2\n"
    contents["windows.txt"] = window_file().encode()
    contents["h5list.txt"] = "".join(f"@ROOT@/{name}\n" for name in HDF5_FILES).encode()
    for name, data in contents.items():
        Path(root, name).write_bytes(data.replace(b"@ROOT@", str(root).encode()))
        files[name] = f"file/{name}"
        arrays[files[name]] = as_array(data)
    h5 = {}
    for name, (rows, data_type, label_type) in HDF5_FILES.items():
        datasets = {"data": (rng.standard_normal((rows,) + HDF5_ROW) * 10).astype(data_type),
                    "label": rng.integers(0, 9, rows).astype(label_type)}
        with h5py.File(Path(root, name), "w") as handle:
            for key, value in datasets.items():
                handle.create_dataset(key, data=value)
        h5[name] = {}
        for key, value in datasets.items():
            h5[name][key] = f"h5/{name}/{key}"
            arrays[h5[name][key]] = value
    return files, h5


def run_tool(bin_dir, *args):
    env = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}
    run = subprocess.run([str(Path(bin_dir, args[0])), *args[1:]], env=env, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{args[0]} failed ({run.returncode}):\n{run.stderr}")
    return [line.split("] ", 1)[1] for line in run.stderr.splitlines() if "] " in line]


def write_dbs(bin_dir, root, arrays):
    """Caffe's convert_imageset for each of CONVERTS; returns the converts manifest."""
    converts = {}
    for name, flags in CONVERTS.items():
        run_tool(bin_dir, "convert_imageset", *flags, f"{root}/", f"{root}/list.txt", f"{root}/{name}")
        records = []
        if "--backend=leveldb" in flags:     # the same records as the LMDB of the same flags
            records = converts[name.replace("_leveldb", "")]["records"]
        else:
            for index, (key, value) in enumerate(lmdb_records(Path(root, name))):
                arrays[f"db/{name}/{index}"] = as_array(value)
                records.append([key.decode(), f"db/{name}/{index}"])
        converts[name] = {"flags": flags, "backend": "leveldb" if "--backend=leveldb" in flags else "lmdb",
                          "list": "list.txt", "records": records}
    return converts


def run_case(caffe, root, name, spec, arrays):
    text, phase, seed, forwards = spec
    path = Path(root, f"{name}.prototxt")
    path.write_text(text.replace("@ROOT@", str(root)))
    caffe.set_random_seed(seed)
    net = caffe.Net(str(path), caffe.TRAIN if phase == "TRAIN" else caffe.TEST)
    tops = list(net.outputs)
    passes = []
    for k in range(forwards):
        net.forward()
        for top in tops:
            arrays[f"case/{name}/{k}/{top}"] = net.blobs[top].data.copy()
        passes.append({top: f"case/{name}/{k}/{top}" for top in tops})
    return {"prototxt": text, "phase": phase, "seed": seed, "forwards": passes}


def memory_case(caffe, root, rng, arrays):
    batch, shape, forwards = MEMORY["batch"], MEMORY["shape"], MEMORY["forwards"]
    text = (f'layer {{ name: "m" type: "MemoryData" top: "data" top: "label" transform_param {{ scale: 3 }} '
            f'memory_data_param {{ batch_size: {batch} channels: {shape[1]} height: {shape[2]} width: {shape[3]} }} }}\n')
    path = Path(root, "memory.prototxt")
    path.write_text(text)
    net = caffe.Net(str(path), caffe.TEST)
    data = rng.standard_normal(shape).astype(np.float32)
    labels = np.arange(shape[0], dtype=np.float32) + 0.5
    arrays["memory/data"], arrays["memory/labels"] = data, labels
    net.set_input_arrays(data, labels)
    passes = []
    for k in range(forwards):
        net.forward()
        for top in ("data", "label"):
            arrays[f"memory/{k}/{top}"] = net.blobs[top].data.copy()
        passes.append({top: f"memory/{k}/{top}" for top in ("data", "label")})
    return {"prototxt": text, "data": "memory/data", "labels": "memory/labels", "forwards": passes}


def output_case(caffe, root, rng, arrays):
    import h5py
    inputs = "".join(f'layer {{ name: "in_{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                     + " ".join(f"dim: {d}" for d in s) + " } } }\n" for n, s in OUTPUT.items())
    text = inputs + ('layer { name: "out" type: "HDF5Output" bottom: "data" bottom: "label" '
                     'hdf5_output_param { file_name: "@ROOT@/out.h5" } }\n')
    path = Path(root, "output.prototxt")
    path.write_text(text.replace("@ROOT@", str(root)))
    net = caffe.Net(str(path), caffe.TEST)
    for name, shape in OUTPUT.items():
        arrays[f"output/in/{name}"] = rng.standard_normal(shape).astype(np.float32)
        net.blobs[name].data[...] = arrays[f"output/in/{name}"]
    net.forward()
    del net                                  # Caffe closes the file in the layer's destructor
    written = {}
    with h5py.File(Path(root, "out.h5"), "r") as handle:
        for name in sorted(handle):
            arrays[f"output/file/{name}"] = handle[name][()]
            written[name] = {"key": f"output/file/{name}", "dtype": str(handle[name].dtype)}
    return {"prototxt": text, "inputs": {n: f"output/in/{n}" for n in OUTPUT}, "written": written}


def write_data(caffe, out, tmp, save, version):
    """Run every data case in the real Caffe and save the fixture `data`."""
    bin_dir = Path(caffe.__file__).resolve().parents[2] / "bin"
    rng = np.random.default_rng(5)
    root = Path(tmp)
    arrays = {}
    files, h5 = write_files(root, rng, arrays)
    converts = write_dbs(bin_dir, root, arrays)
    mean_log = run_tool(bin_dir, "compute_image_mean", f"{root}/{MEAN_DB}", f"{root}/mean.binaryproto")
    files["mean.binaryproto"] = "file/mean.binaryproto"
    arrays[files["mean.binaryproto"]] = as_array(Path(root, "mean.binaryproto").read_bytes())
    cases = {name: run_case(caffe, root, name, spec, arrays) for name, spec in CASES.items()}
    manifest = {"caffe": version(caffe), "files": files, "h5": h5, "converts": converts,
                "mean": {"db": MEAN_DB, "file": "mean.binaryproto",
                         "log": [line for line in mean_log if "mean_value" in line or "channels" in line]},
                "cases": cases, "memory": memory_case(caffe, root, rng, arrays),
                "output": output_case(caffe, root, rng, arrays)}
    save(out, "data", manifest, arrays)
