"""`import caffe` (caffe/__init__.py): the engine's pycaffe namespace without duplicate modules, and a
real pycaffe's precedence wherever it sits on sys.path, switched by SEC_CAFFE (auto | sec | bvlc).

Each case runs in a fresh interpreter (the choice is made at the first `import caffe`). A fake
"real pycaffe" is a folder `caffe/` with an __init__.py and a file named like the compiled `_caffe`
module (never imported: the fake's __init__ does not load it). The live case with BVLC's own pycaffe
is in tests/test_pycaffe_live.py.
"""
import importlib.machinery
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def run_python(code, *path, environ=None, expect_ok=True):
    """Run `code` in a fresh interpreter with PYTHONPATH = `path` (the checkout when empty) and
    SEC_CAFFE per `environ`; returns the JSON of its last stdout line (or the failed process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SEC_CAFFE")}
    env.update(PYTHONPATH=os.pathsep.join(str(p) for p in (path or (REPO,))), OMP_NUM_THREADS="1", **(environ or {}))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S, cwd=REPO.parent)
    if not expect_ok:
        assert result.returncode != 0, result.stdout
        return result
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def fake_pycaffe(folder, importable=True, compiled=True):
    """A stand-in for BVLC's python/ folder: caffe/__init__.py (REAL = True) and caffe/_caffe<suffix>."""
    package = folder / "caffe"
    package.mkdir(parents=True)
    body = "REAL = True\n" if importable else "raise RuntimeError('libcaffe.so.1.0.0: cannot open shared object file')\n"
    (package / "__init__.py").write_text(body)
    if compiled:
        (package / f"_caffe{importlib.machinery.EXTENSION_SUFFIXES[-1]}").write_bytes(b"")
    return folder


WHICH = """
import json, caffe
print(json.dumps({"file": caffe.__file__, "real": getattr(caffe, "REAL", False)}))
"""


def test_engine_modules_are_the_engines_own_objects():
    found = run_python(f"""
        import json, sys
        import caffe, caffe.io, caffe.net_spec, caffe.coord_map, caffe.classifier, caffe.detector, caffe.pycaffe
        import caffe.proto.caffe_pb2
        from caffe import layers as L, params as P
        from caffe.proto import caffe_pb2
        import sec.caffe, sec.caffe.io, sec.caffe.net_spec, sec.proto.caffe_pb2
        same = {{
            "io": caffe.io is sec.caffe.io, "net_spec": caffe.net_spec is sec.caffe.net_spec,
            "coord_map": caffe.coord_map is sys.modules["sec.caffe.coord_map"],
            "classifier": caffe.classifier is sys.modules["sec.caffe.classifier"],
            "detector": caffe.detector is sys.modules["sec.caffe.detector"],
            "pycaffe": caffe.pycaffe is sys.modules["sec.caffe.pycaffe"],
            "caffe_pb2": caffe_pb2 is sec.proto.caffe_pb2 and caffe.proto.caffe_pb2 is caffe_pb2,
            "layers": L is sec.caffe.net_spec.layers, "params": P is sec.caffe.net_spec.params,
            "Net": caffe.Net is sec.caffe.Net and caffe.pycaffe.Net is caffe.Net,
            "Layer": caffe.Layer is sec.caffe.Layer, "Blob": caffe.Blob is sec.caffe.Blob,
            "NetSpec": caffe.NetSpec is caffe.net_spec.NetSpec, "TRAIN": (caffe.TRAIN, caffe.TEST) == (0, 1),
            "Classifier": issubclass(caffe.Classifier, sec.caffe.Net),
        }}
        # every engine module file loaded once: no second module object under a caffe.* name
        modules = {{id(m): m for m in list(sys.modules.values())}}.values()   # each module object once
        files = [m.__file__ for m in modules if str(getattr(m, "__file__", "")).startswith({str(REPO)!r})]
        print(json.dumps({{"same": same, "file": caffe.__file__, "duplicates": sorted({{f for f in files if files.count(f) > 1}}),
                          "version": caffe.__version__, "nccl": caffe.has_nccl()}}))
    """)
    assert found["file"] == str(REPO / "caffe" / "__init__.py")
    assert all(found["same"].values()), found["same"]
    assert found["duplicates"] == []
    assert found["version"] == "1.0.0" and found["nccl"] is False


def test_isinstance_holds_across_the_two_names(tmp_path):
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 } }\n')
    found = run_python(f"""
        import json, caffe
        from sec import caffe as engine
        a = caffe.Net({str(tmp_path / 'net.prototxt')!r}, caffe.TEST)
        b = engine.Net({str(tmp_path / 'net.prototxt')!r}, engine.TEST)
        print(json.dumps([isinstance(a, engine.Net), isinstance(b, caffe.Net),
                          isinstance(caffe.io.Transformer({{}}), engine.io.Transformer)]))
    """)
    assert found == [True, True, True]


def test_layer_module_written_for_pycaffe_runs_unedited(tmp_path):
    """A Python-layer module that says `import caffe` and subclasses caffe.Layer, in a net built by
    the engine; pylayers subclasses the engine's caffe.Layer as it is (no traceback printer)."""
    (tmp_path / "times_two.py").write_text(textwrap.dedent("""
        import caffe

        class TimesTwo(caffe.Layer):
            def setup(self, bottom, top):
                self.blobs.add_blob(1)
                self.blobs[0].data[0] = 2

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = self.blobs[0].data[0] * bottom[0].data
    """))
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "two" type: "Python" bottom: "x" top: "y" python_param { module: "times_two" layer: "TimesTwo" } }\n')
    found = run_python(f"""
        import json
        import numpy as np
        import caffe, pylayers, pylayers.base
        net = caffe.Net({str(tmp_path / 'net.prototxt')!r}, caffe.TEST)
        out = net.forward(x=np.ones((2, 3), np.float32))["y"]
        layer = net.layer_dict["two"]
        print(json.dumps({{"out": out.tolist(), "type": layer.type, "is_layer": isinstance(layer, caffe.Layer),
                          "pylayers_base": pylayers.base.Layer is caffe.Layer}}))
    """, REPO, REPO / "pylayers", tmp_path)
    assert found == {"out": [[2.0] * 3] * 2, "type": "Python", "is_layer": True, "pylayers_base": True}


@pytest.mark.parametrize("order", ["fake first", "checkout first"])
def test_a_real_pycaffe_keeps_precedence(tmp_path, order):
    """BVLC's python/ on PYTHONPATH before or after this package (or on a .pth line, which comes
    after site-packages): `import caffe` gives the real one either way."""
    fake = fake_pycaffe(tmp_path / "bvlc" / "python")
    path = (fake, REPO) if order == "fake first" else (REPO, fake)
    found = run_python(WHICH, *path)
    assert found == {"file": str(fake / "caffe" / "__init__.py"), "real": True}


def test_a_pycaffe_appended_to_sys_path_later_is_found():
    """What a .pth line in site-packages does: the entry comes after the checkout's."""
    found = run_python("""
        import json, os, sys, tempfile
        from pathlib import Path
        folder = Path(tempfile.mkdtemp()) / "caffe"
        folder.mkdir()
        (folder / "__init__.py").write_text("REAL = True")
        (folder / "_caffe.so").write_bytes(b"")
        sys.path.append(str(folder.parent))
        import caffe
        print(json.dumps({"real": getattr(caffe, "REAL", False)}))
    """)
    assert found == {"real": True}


def test_sec_caffe_sec_chooses_the_engine_and_bvlc_the_real_one(tmp_path):
    fake = fake_pycaffe(tmp_path / "python")
    assert run_python(WHICH, REPO, fake, environ={"SEC_CAFFE": "sec"}) == {
        "file": str(REPO / "caffe" / "__init__.py"), "real": False}
    assert run_python(WHICH, REPO, fake, environ={"SEC_CAFFE": "bvlc"})["real"] is True
    failed = run_python(WHICH, REPO, environ={"SEC_CAFFE": "bvlc"}, expect_ok=False)
    assert "SEC_CAFFE=bvlc: no BVLC pycaffe on sys.path" in failed.stderr
    failed = run_python(WHICH, REPO, environ={"SEC_CAFFE": "caffe2"}, expect_ok=False)
    assert "SEC_CAFFE='caffe2': need one of auto, sec, bvlc" in failed.stderr


def test_a_caffe_package_without_its_compiled_module_is_not_a_real_pycaffe(tmp_path):
    """The empty PyPI placeholder named caffe, or a source tree not built: the engine is used."""
    fake = fake_pycaffe(tmp_path / "python", compiled=False)
    assert run_python(WHICH, REPO, fake)["real"] is False


def test_a_broken_real_pycaffe_fails_naming_the_switch_and_leaves_nothing_behind(tmp_path):
    fake = fake_pycaffe(tmp_path / "python", importable=False)
    code = """
        import json, sys
        try:
            import caffe
        except RuntimeError as err:
            notes = getattr(err, "__notes__", [])
            left = [m for m in sys.modules if m == "caffe" or m.startswith("caffe.")]
            print(json.dumps({"error": str(err), "notes": notes, "left": left}))
    """
    found = run_python(code, REPO, fake)
    assert "libcaffe" in found["error"] and found["left"] == []
    assert any("SEC_CAFFE=sec selects this project's engine" in note for note in found["notes"])
