"""Data files `onnxfold check` reads besides the models: --inputs .npz and --image pictures
whose headers ask for more than they hold, or more than a check needs. Memory-limited
processes: a regression must fail here, not take the machine down."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from numpy.lib import format as npy
from PIL import Image

from tests.builders import conv_bn_model
from tests.hostile.tools import Tree, assert_error, subproc

NPZ = "an .npz file of named input arrays (numpy.savez)"
PICTURE = "a picture Pillow can read (JPEG, PNG, ...)"


def _npz(path, shape, data: bytes, name="X.npy"):
    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buf.write(data)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, buf.getvalue())
    return path


def test_npz_headers(tmp_path):
    m = tmp_path / "m.onnx"
    m.write_bytes(conv_bn_model().SerializeToString())
    bomb = _npz(tmp_path / "bomb.npz", (2**20, 2**20), bytes(16))  # numpy allocated 4 TiB
    short = _npz(tmp_path / "short.npz", (1, 4, 9, 9), bytes(16))
    stray = _npz(tmp_path / "stray.npz", (1,), bytes(4), name="notes.txt")
    one = tmp_path / "one.npy"
    np.save(one, np.zeros((1, 4, 9, 9), np.float32))
    tree = Tree(tmp_path)
    for path, found in (
        (bomb, "member 'X.npy' declares <f4 1048576x1048576 (4398046511104 bytes) and holds "
               "16 bytes"),
        (short, "member 'X.npy' declares <f4 1x4x9x9 (1296 bytes) and holds 16 bytes"),
        (stray, "member 'notes.txt' is not an .npy array"),
        (one, "no zip archive of .npy arrays (a single .npy array?)"),
    ):
        assert_error(subproc("check", m, m, "--inputs", path), path, NPZ, found)
    tree.assert_unchanged()


def test_picture_bombs(tmp_path):
    m = tmp_path / "m.onnx"
    m.write_bytes(conv_bn_model(cin=3).SerializeToString())
    huge_input = conv_bn_model(cin=3)
    dims = huge_input.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 2**20  # Pillow filled it until the OOM killer came
    big = tmp_path / "big.onnx"
    big.write_bytes(huge_input.SerializeToString())
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10000, 10000)).save(bomb)  # 12 kB, 10^8 pixels
    small = tmp_path / "small.png"
    Image.new("RGB", (4, 4)).save(small)
    tree = Tree(tmp_path)
    assert_error(subproc("check", m, m, "--image", f"X={bomb}"), bomb, PICTURE,
                 "Image size (100000000 pixels) exceeds limit of 89478485 pixels, could be "
                 "decompression bomb DOS attack.")
    assert_error(subproc("check", big, big, "--image", f"X={small}"), small,
                 "an input of at most 1 GiB to feed a picture to",
                 "an input of shape [1, 3, 1048576, 1048576]")
    tree.assert_unchanged()
