"""`onnxfold convert` end to end: the bundled model's pipeline, --fold, exit codes, files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxfold.cli import main
from onnxfold.parity import check_parity
from tests.clitools import digest
from tests.clitools import run_cli as run
from tests.darknet.helpers import REPO, ops, write_cfg, write_weights

BUNDLED_CFG = REPO / "models" / "yolov2-tiny.cfg"
SMALL = ("[convolutional]\nbatch_normalize=1\nfilters=12\nsize=3\npad=1\nactivation=leaky\n\n"
         "[maxpool]\nsize=2\nstride=2\n\n[convolutional]\nfilters=12\nsize=1\nactivation=linear\n"
         "\n[region]\nanchors=1,1,2,2\nnum=2\nclasses=1\nsoftmax=1\n")
SMALL_FLOATS = 12 * 4 + 12 * 27 + 12 + 12 * 12




@pytest.fixture
def small(tmp_path) -> tuple[Path, Path]:
    cfg = write_cfg(tmp_path / "small.cfg", SMALL)
    return cfg, write_weights(tmp_path / "small.weights", SMALL_FLOATS)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> tuple[Path, Path]:
    """The bundled cfg converted with synthetic weights (seed 0): unfolded and --fold."""
    d = tmp_path_factory.mktemp("bundled")
    assert main(["convert", str(BUNDLED_CFG), "--weights-seed", "0", "-o", str(d / "y.onnx"),
                 "-q"]) == 0
    assert main(["convert", str(BUNDLED_CFG), "--weights-seed", "0", "-o",
                 str(d / "y.folded.onnx"), "--fold", "-q"]) == 0
    return d / "y.onnx", d / "y.folded.onnx"


def test_readme_pipeline_convert_then_fuse(capsys, bundled, tmp_path):
    """models/yolov2-tiny.cfg -> convert (synthetic weights) -> fuse, which checks parity."""
    rc, out, err = run(capsys, "fuse", bundled[0], "-o", tmp_path / "f.onnx")
    assert (rc, err) == (0, "")
    assert "folded 8 of 8 BatchNormalization" in out
    assert "check: PASS" in out
    assert ops(onnx.load(tmp_path / "f.onnx")).get("BatchNormalization", 0) == 0


def test_convert_output_text(capsys, tmp_path):
    rc, out, err = run(capsys, "convert", BUNDLED_CFG, "--weights-seed", "0", "-o",
                       tmp_path / "y.onnx")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    target = tmp_path / "y.onnx"
    assert lines[0] == f"onnxfold convert: {BUNDLED_CFG} (weights seed 0) -> {target}"
    assert lines[1] == ("16 darknet layers; head darknet, bn-eps darknet; input images 1x3x416x416,"
                        " output 1x425x13x13")
    assert lines[2] == ("ops: BatchNormalization 8, Concat 1, Conv 9, LeakyRelu 8, MaxPool 6, "
                        "Reshape 2, Sigmoid 2, Softmax 1, Split 1")


def test_fold_has_no_batchnorm_and_passes_the_check(bundled):
    unfolded, folded = (onnx.load(p) for p in bundled)
    onnx.checker.check_model(folded, full_check=True)
    assert ops(unfolded)["BatchNormalization"] == 8
    assert "BatchNormalization" not in ops(folded)
    assert ops(folded)["Conv"] == 9
    for seed in (0, 1):
        report = check_parity(unfolded, folded, seed=seed)
        assert report.status == "pass"
        (o,) = report.outputs
        assert o.max_abs <= 1e-4 * o.ref_max


def test_onnxfold_check_passes_folded_against_unfolded(capsys, bundled):
    rc, out, err = run(capsys, "check", *bundled)
    assert (rc, err) == (0, "")
    assert "check: PASS" in out


def test_fold_prints_the_check(capsys, small, tmp_path):
    cfg, weights = small
    rc, out, err = run(capsys, "convert", cfg, weights, "-o", tmp_path / "f.onnx", "--fold")
    assert (rc, err) == (0, "")
    assert "folded 1 of 1 BatchNormalization" in out
    assert "  BatchNormalization       1      0  (-1)" in out
    assert "check: PASS" in out


def test_metadata_props(bundled):
    meta = {p.key: p.value for p in onnx.load(bundled[0]).metadata_props}
    cfg_sha = digest(BUNDLED_CFG)
    assert meta == {
        "darknet.anchors": "0.57273,0.677385,1.87446,2.06253,3.33843,5.47434,7.88282,3.52778,"
                           "9.77052,9.16828",
        "darknet.bn_eps": "darknet",
        "darknet.cfg": f"yolov2-tiny.cfg sha256:{cfg_sha}",
        "darknet.classes": "80",
        "darknet.coords": "4",
        "darknet.head": "darknet",
        "darknet.height": "416",
        "darknet.input": "images 1x3x416x416 float32 RGB in [0,1], planar (CHW)",
        "darknet.num": "5",
        "darknet.weights": "synthetic, seed 0",
        "darknet.width": "416",
    }
    folded = {p.key: p.value for p in onnx.load(bundled[1]).metadata_props}
    assert {k: v for k, v in folded.items() if k.startswith("darknet.")} == meta


def test_same_input_same_bytes(capsys, small, tmp_path):
    cfg, weights = small
    for name in ("a", "b"):
        assert run(capsys, "convert", cfg, weights, "-o", tmp_path / f"{name}.onnx")[0] == 0
    assert digest(tmp_path / "a.onnx") == digest(tmp_path / "b.onnx")
    for name in ("c", "d"):
        assert run(capsys, "convert", cfg, "--weights-seed", "3", "-o",
                   tmp_path / f"{name}.onnx")[0] == 0
    assert digest(tmp_path / "c.onnx") == digest(tmp_path / "d.onnx")
    assert run(capsys, "convert", cfg, "--weights-seed", "4", "-o", tmp_path / "e.onnx")[0] == 0
    assert digest(tmp_path / "c.onnx") != digest(tmp_path / "e.onnx")


def test_synthetic_weights_do_not_depend_on_the_flavour(small):
    from onnx import numpy_helper

    from onnxfold.darknet import convert_darknet

    cfg, _ = small
    pj = convert_darknet(cfg, weights_seed=0, bn_eps="darknet").model
    ab = convert_darknet(cfg, weights_seed=0, bn_eps="alexeyab").model
    a = {t.name: numpy_helper.to_array(t) for t in pj.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in ab.graph.initializer}
    assert a.keys() == b.keys()
    for k in a:
        if k != "bn0.var":  # pj's is (sqrt(var) + 1e-6)^2 for epsilon 0
            np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_allclose(np.sqrt(a["bn0.var"]), np.sqrt(b["bn0.var"]) + 1e-6, rtol=1e-6)


def test_default_output_beside_the_cfg(capsys, small):
    cfg, weights = small
    rc, out, _ = run(capsys, "convert", cfg, weights, "-q")
    assert (rc, out) == (0, "")
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["small.cfg", "small.onnx",
                                                            "small.weights"]


def test_inputs_untouched_and_force(capsys, small):
    cfg, weights = small
    before = [(digest(p), p.stat().st_mtime_ns) for p in (cfg, weights)]
    target = cfg.parent / "out.onnx"
    assert run(capsys, "convert", cfg, weights, "-o", target)[0] == 0
    rc, _, err = run(capsys, "convert", cfg, weights, "-o", target)
    assert rc == 2
    assert err == (f"onnxfold: error: {target}: expected a path with no file yet (or --force), "
                   "found an existing file\n")
    assert run(capsys, "convert", cfg, weights, "-o", target, "--force")[0] == 0
    assert [(digest(p), p.stat().st_mtime_ns) for p in (cfg, weights)] == before


def error_cases(d: Path, cfg: Path, weights: Path) -> list[tuple[list, str]]:
    short = write_weights(d / "short.weights", SMALL_FLOATS - 1)
    unknown = write_cfg(d / "unknown.cfg", "[convolutional]\nfilters=2\n\n[sam]\nfrom=0\n")
    bad = write_cfg(d / "bad.cfg", "[convolutional]\nfilters=2\nsize=three\n")
    groups = write_cfg(d / "groups.cfg", "[convolutional]\nfilters=2\n\n[route]\nlayers=-1\n"
                       "groups=2\ngroup_id=1\n")
    out = d / "out.onnx"
    return [
        ([groups, "--weights-seed", "0", "-o", out, "--head", "raw"],
         f"{groups}:11: [route] layer 1, key 'groups': expected groups=1 with --bn-eps darknet "
         "(the original darknet: it ignores route groups; convert with --bn-eps alexeyab for "
         "the AlexeyAB fork), found groups=2"),
        ([d / "no.cfg", weights, "-o", out],
         f"{d / 'no.cfg'}: expected a darknet .cfg text file, found no such file"),
        ([cfg, short, "-o", out],
         f"{short}: expected {SMALL_FLOATS} float32 values after the 20-byte header (version "
         f"0.2.0), as the cfg implies: {20 + 4 * SMALL_FLOATS} bytes in all, found "
         f"{SMALL_FLOATS - 1} floats (the file ends in layer 2 [convolutional] weights (float "
         f"143 of 144)): {20 + 4 * (SMALL_FLOATS - 1)} bytes"),
        ([unknown, weights, "-o", out, "--head", "raw"],
         f"{unknown}:9: [sam] layer 1: expected a layer onnxfold converts ([convolutional], "
         "[connected], [maxpool], [avgpool], [route], [shortcut], [upsample], [reorg], "
         "[softmax], [dropout], [cost], [region], [yolo]), found [sam], not supported"),
        ([bad, weights, "-o", out],
         f"{bad}:8: [convolutional] layer 0, key 'size': expected an integer, found 'three'"),
        ([cfg, weights, "--weights-seed", "1", "-o", out],
         "convert: expected a .weights file or --weights-seed (one of them), found both"),
        ([cfg, "-o", out], "convert: expected a .weights file or --weights-seed (one of them), "
         "found neither"),
        ([cfg, "--weights-seed", "-1", "-o", out], "--weights-seed: expected an integer >= 0, "
         "found -1"),
        ([cfg, weights, "-o", d / "nowhere" / "x.onnx"],
         f"{d / 'nowhere' / 'x.onnx'}: expected a path in an existing folder, found no folder "
         f"'{d / 'nowhere'}'"),
        ([cfg, weights, "-o", cfg, "--force"],
         f"{cfg}: expected an output path other than the input, found the input file itself"),
        ([cfg, weights, "-o", weights, "--force"],
         f"{weights}: expected an output path other than the input, found the weights file"),
        ([cfg, weights, "-o", d], f"{d}: expected an output file path, found a directory"),
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, small):
    cfg, weights = small
    d = cfg.parent
    for argv, message in error_cases(d, cfg, weights):
        before = sorted(p.name for p in d.iterdir())
        rc, out, err = run(capsys, "convert", *argv)
        assert (rc, out, err) == (2, "", f"onnxfold: error: {message}\n"), argv
        assert sorted(p.name for p in d.iterdir()) == before


def test_unknown_choice_is_a_usage_error(capsys, small):
    cfg, weights = small
    with pytest.raises(SystemExit) as e:
        main(["convert", str(cfg), str(weights), "--bn-eps", "opencv"])
    assert e.value.code == 2
    assert "invalid choice: 'opencv'" in capsys.readouterr().err


def test_module_entry_point(small, tmp_path):
    cfg, weights = small
    r = subprocess.run([sys.executable, "-m", "onnxfold", "convert", str(cfg), str(weights),
                        "-o", str(tmp_path / "m.onnx"), "--head", "raw", "--bn-eps", "alexeyab"],
                       capture_output=True, text=True, cwd=REPO)
    assert (r.returncode, r.stderr) == (0, "")
    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert (meta["darknet.head"], meta["darknet.bn_eps"]) == ("raw", "alexeyab")
    model = onnx.load(tmp_path / "m.onnx")
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 12, 4, 4]
