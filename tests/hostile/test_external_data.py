"""External data locations that leave the model's folder or its file, through `onnxfold check`
(tests/test_external_data.py runs the same cases through `onnxfold fuse`): refused from the
location alone, the file it names never opened, for either side of the pair."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.hostile.tools import Tree, assert_error, inproc
from tests.test_external_data import (
    _ARMED,
    _OPENED,
    HOSTILE,
    save_external,
    set_entries,
    weights_model,
)


@pytest.mark.parametrize("side", ["reference", "candidate"])
@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink-out", "symlinked-folder",
                                  "offset-past-end", "length-past-end"])
def test_check_refuses_without_reading(capsys, tmp_path, case, side):
    folder = tmp_path / "model"
    folder.mkdir()
    src = save_external(weights_model(), folder / "m.onnx")
    good = save_external(weights_model(), tmp_path / "good.onnx")
    secret = tmp_path / "secret.bin"
    shutil.copyfile(folder / "m.onnx.data", secret)
    size = str((folder / "m.onnx.data").stat().st_size)
    make, expected, found = HOSTILE[case]
    pairs = [(k, v.replace("{size+1}", str(int(size) + 1))
              .replace("{size-100}", str(int(size) - 100))) for k, v in make(folder, secret)]
    set_entries(src, "W", pairs)
    if callable(found):
        found = found(folder, secret)
    found = (found.replace("{size+1}", str(int(size) + 1))
             .replace("{size-100}", str(int(size) - 100)).replace("{size}", size))
    loc = dict(pairs)["location"]
    tree = Tree(tmp_path)
    argv = ["check", src, good] if side == "reference" else ["check", good, src]
    _OPENED.clear()
    _ARMED[0] = True
    try:
        run = inproc(capsys, *argv)
    finally:
        _ARMED[0] = False
    assert_error(run, src, expected.removeprefix("expected "),
                 f"tensor 'W' with location '{loc}': {found}")
    tree.assert_unchanged()
    assert os.path.realpath(secret) not in _OPENED
    assert os.path.realpath(folder / "m.onnx.data") not in _OPENED
