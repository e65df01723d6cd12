"""Real networks: torch-built ResNet, MobileNetV2, DenseNet, U-Net and YOLO-style nets, exported
with every BatchNormalization kept, then folded: op counts, onnx.checker, ORT parity.

The nets live in tests/torch_nets.py (no torchvision: small widths, 1x3x64x64 inputs). Their BN
statistics are measured on data, perturbed, and channel 0 of every BN has variance 1e-6, below
epsilon, so a fold that drops or misplaces epsilon fails here by orders of magnitude.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxfold
from onnxfold.modelio import model_bytes
from onnxfold.parity import check_parity
from tests.builders import max_rel_error, ops, run_ort

pytest.importorskip("torch")  # installed by the [test] extra; conftest fails a skip under CI

from tests import torch_nets

# Allowed max abs error over max |reference output|, float32. Measured on these nets (check's
# uniform inputs and standard-normal inputs): 2e-7 (DenseNet) to 1.7e-5 (YOLO, 47 folds, outputs
# up to ~90). That is float32 rounding, not the fold: against a float64 torch run, torch's own
# float32 output is off by as much (1.4e-5 on YOLO) as the folded model (1.2e-5). 1e-4 is the
# tool's own float32 tolerance, 6x above the worst; a fold without epsilon is off by > 1.
TOL = 1e-4

BN = "BatchNormalization"
CONV_BN = "Conv+BatchNormalization"


@dataclass(frozen=True)
class Expect:
    ops: dict[str, int]  # op counts of the export: a torch change to the export shows here
    folded: dict[str, int]  # by rule
    refused: dict[str, int] = field(default_factory=dict)  # by code


EXPECT = {
    # torchvision's ResNet-18 has 20 BNs: stem, 2 per BasicBlock, 3 downsample branches.
    "resnet18": Expect(
        {"Add": 8, BN: 20, "Conv": 20, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1,
         "MaxPool": 1, "Relu": 17},
        {CONV_BN: 20}),
    # ResNet-50: 53 BNs (stem, 3 per Bottleneck x 16, 4 downsample); one with gamma 0.
    "resnet50": Expect(
        {"Add": 16, BN: 53, "Conv": 53, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1,
         "MaxPool": 1, "Relu": 49},
        {CONV_BN: 53}),
    # MobileNetV2: 52 BNs, as torchvision's; 17 follow a depthwise Conv. ReLU6 exports as Clip
    # with its bounds as Constant nodes.
    "mobilenet_v2": Expect(
        {"Add": 10, BN: 52, "Clip": 35, "Constant": 70, "Conv": 52, "Flatten": 1, "Gemm": 1,
         "GlobalAveragePool": 1},
        {CONV_BN: 52}),
    # DenseNet-BC: the stem BN and each dense layer's second BN (after its 1x1 Conv) fold. The
    # other 9 read a Concat: the 7 pre-activation BNs (torch.cat of a single tensor exports as
    # a one-input Concat too), the transition BN and the final BN. No layer before a Concat can
    # take the fold (those feature maps feed every later layer), and each of these BNs is read
    # by a Relu, so folding forward into a Conv is impossible as well: 'no-producer' is right.
    "densenet": Expect(
        {"AveragePool": 1, BN: 17, "Concat": 9, "Conv": 16, "Flatten": 1, "Gemm": 1,
         "GlobalAveragePool": 1, "MaxPool": 1, "Relu": 17},
        {CONV_BN: 8}, {"no-producer": 9}),
    # U-Net: 14 Conv BNs; 4 ConvTranspose BNs (k2/s2, k3/s2 with output_padding 1, and a
    # depthwise one with group = 8).
    "unet": Expect(
        {BN: 18, "Concat": 3, "Conv": 15, "ConvTranspose": 4, "MaxPool": 3, "Relu": 18},
        {CONV_BN: 14, "ConvTranspose+BatchNormalization": 4}),
    # YOLOv5-style: 47 Conv-BN-SiLU (SiLU exports as Sigmoid and Mul, both reading the BN
    # output); the 2 detect Convs have a bias and no BN. Upsample exports as Resize.
    "yolo": Expect(
        {"Add": 5, BN: 47, "Concat": 11, "Constant": 2, "Conv": 49, "MaxPool": 3, "Mul": 47,
         "Resize": 2, "Sigmoid": 47},
        {CONV_BN: 47}),
}
assert EXPECT.keys() == torch_nets.NETS.keys()


@functools.cache
def exported(name: str) -> onnx.ModelProto:
    return torch_nets.build(name).export()


@functools.cache
def fused(name: str) -> onnxfold.FuseResult:
    return onnxfold.fuse(exported(name))


def bn_attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def assert_parity(original: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    """The tool's check passes, and max abs err / max|ref| <= TOL on two input distributions."""
    report = check_parity(original, folded)
    assert report.status == "pass", report
    rel = [o.max_abs / o.ref_max for o in report.outputs]
    assert max(rel) <= TOL, rel
    assert max_rel_error(original, folded) <= TOL  # standard-normal inputs


@pytest.mark.parametrize("name", EXPECT)
def test_export_keeps_batchnorm(name):
    """The export is what the fold tests assume: eval-mode BNs with running statistics."""
    m = exported(name)
    assert dict(ops(m)) == EXPECT[name].ops
    assert [(o.domain, o.version) for o in m.opset_import] == [("", torch_nets.OPSET)]
    assert [i.name for i in m.graph.input] == ["images"]  # parameters are not overridable
    inits = {t.name for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == BN:
            # training_mode 0 and one output: inference BN (TrainingMode.TRAINING gives 1 and
            # 3 outputs, and ORT then normalizes with batch statistics).
            assert bn_attrs(n) == {"epsilon": np.float32(1e-5), "momentum": np.float32(0.9),
                                   "training_mode": 0}
            assert len(n.output) == 1
            assert set(n.input[1:]) <= inits
    # ORT on the export computes what torch computes in eval mode.
    x = np.random.default_rng(3).random(torch_nets.SHAPE, dtype=np.float32)
    for got, want in zip(run_ort(m, {"images": x}), torch_nets.build(name).torch_outputs(x),
                         strict=True):
        assert np.abs(got - want).max() <= TOL * np.abs(want).max()


@pytest.mark.parametrize("name", EXPECT)
def test_fold(name):
    m, result, expect = exported(name), fused(name), EXPECT[name]
    assert Counter(f.rule for f in result.folded) == Counter(expect.folded)
    assert Counter(r.code for r in result.refused) == Counter(expect.refused)
    # Every fold removes exactly its BN; refused BNs are the ones left.
    after = dict(ops(m))
    after[BN] -= len(result.folded)
    assert dict(ops(result.model)) == {k: v for k, v in after.items() if v}
    left = [n.name for n in result.model.graph.node if n.op_type == BN]
    assert sorted(left) == sorted(r.node for r in result.refused)
    onnx.checker.check_model(result.model, full_check=True)
    assert_parity(m, result.model)


def test_densenet_refusals_are_bns_between_concat_and_relu():
    m, result = exported("densenet"), fused("densenet")
    producer = {o: n for n in m.graph.node for o in n.output}
    readers: dict[str, list[str]] = {}
    for n in m.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    bns = {n.name: n for n in m.graph.node if n.op_type == BN}
    refused = [bns[r.node] for r in result.refused]
    assert [producer[n.input[0]].op_type for n in refused] == ["Concat"] * 9
    assert [readers[n.output[0]] for n in refused] == [["Relu"]] * 9
    assert all("Concat" in r.reason for r in result.refused)


def test_resnet50_zero_gamma_folds_to_zero_weight():
    """zero_init_residual's gamma 0: the Conv's weight becomes all zeros, its bias exactly beta."""
    def arrays(g: onnx.GraphProto) -> dict[str, np.ndarray]:
        return {t.name: numpy_helper.to_array(t) for t in g.initializer}

    before, after = arrays(exported("resnet50").graph), arrays(fused("resnet50").model.graph)
    betas = [before[n.input[2]] for n in exported("resnet50").graph.node
             if n.op_type == BN and not before[n.input[1]].any()]
    zero = [n for n in fused("resnet50").model.graph.node
            if n.op_type == "Conv" and not after[n.input[1]].any()]
    assert len(betas) == len(zero) == 1
    np.testing.assert_array_equal(after[zero[0].input[2]], betas[0])


@pytest.mark.parametrize("name", EXPECT)
def test_a_fold_without_epsilon_would_fail(name):
    """The statistics make the check sensitive: folding as if epsilon were 0 fails parity."""
    broken = onnx.ModelProto()
    broken.CopyFrom(exported(name))
    for n in broken.graph.node:
        for a in n.attribute:
            if n.op_type == BN and a.name == "epsilon":
                a.f = 1e-12
    report = check_parity(exported(name), onnxfold.fuse(broken).model)
    assert report.status == "fail"
    assert max(o.max_abs / o.ref_max for o in report.outputs) > 100 * TOL


@pytest.mark.parametrize("opset", [7, 9, 13, 14, 15, 20])
def test_resnet18_every_batchnorm_version(opset):
    """BN-7 (opset 7, IR 3: initializers listed as inputs, constant by that IR), 9, 14, 15."""
    m = torch_nets.build("resnet18").export(opset)
    assert m.opset_import[0].version == opset
    attrs = {"epsilon": np.float32(1e-5), "momentum": np.float32(0.9)}
    if opset >= 14:
        attrs["training_mode"] = 0
    assert [bn_attrs(n) for n in m.graph.node if n.op_type == BN] == [attrs] * 20
    result = onnxfold.fuse(m)
    assert (len(result.folded), result.refused) == (20, [])
    assert ops(result.model)[BN] == 0
    onnx.checker.check_model(result.model, full_check=True)
    assert_parity(m, result.model)


def test_resnet18_initializers_as_inputs_are_refused():
    """keep_initializers_as_inputs=True at IR >= 4: every weight is overridable, none folds."""
    m = torch_nets.build("resnet18").export(keep_initializers_as_inputs=True)
    assert m.ir_version >= 4 and len(m.graph.input) == 1 + len(m.graph.initializer)
    result = onnxfold.fuse(m)
    assert result.folded == []
    assert Counter(r.code for r in result.refused) == {"not-constant": 20}
    assert all("input" in r.reason for r in result.refused), result.refused[0].reason
    assert model_bytes(result.model) == model_bytes(m)


# Layers the nets above lack, as torch exports them: (rules folded, codes refused).
PATTERN_EXPECT = {
    "linear-bn1d": (["Gemm+BatchNormalization"], []),  # Linear exports as Gemm
    "linear-nobias-bn1d": (["MatMul+BatchNormalization"], []),  # bias=False: MatMul -> Gemm
    "conv1d-bn1d": ([CONV_BN], []),
    "conv3d-bn3d": ([CONV_BN], []),
    "bn-affine-false": ([CONV_BN], []),  # gamma 1 and beta 0 export as Constant nodes
    "input-bn": (["BatchNormalization+Conv"], []),  # a data BN, folded into the unpadded Conv
    # track_running_stats=False: eval mode still normalizes with batch statistics, which the
    # export computes with ReduceMean from the Conv's output. Not foldable; the engine names
    # the first obstacle it meets, the Conv output's second reader.
    "batch-statistics": ([], ["shared-output"]),
}
assert PATTERN_EXPECT.keys() == torch_nets.PATTERNS.keys()


# torch's batch-size check for batch statistics, traced once: harmless for a fixed-shape export.
@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")
@pytest.mark.parametrize("name", PATTERN_EXPECT)
def test_layer_patterns(name):
    net = torch_nets.build(name)
    m = net.export()
    assert [(o.domain, o.version) for o in m.opset_import] == [("", torch_nets.OPSET)]
    x = np.random.default_rng(3).random(tuple(net.x.shape), dtype=np.float32)
    got, want = run_ort(m, {"images": x})[0], net.torch_outputs(x)[0]
    assert np.abs(got - want).max() <= TOL * np.abs(want).max()
    rules, codes = PATTERN_EXPECT[name]
    result = onnxfold.fuse(m)
    assert [f.rule for f in result.folded] == rules
    assert [r.code for r in result.refused] == codes
    assert ops(result.model)[BN] == len(codes)
    onnx.checker.check_model(result.model, full_check=True)
    if codes:
        assert model_bytes(result.model) == model_bytes(m)
    assert_parity(m, result.model)


@pytest.mark.parametrize("name", ["resnet18", "densenet"])
def test_cli_end_to_end(tmp_path, name):
    src, out, rep = tmp_path / f"{name}.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    src.write_bytes(model_bytes(exported(name)))
    p = subprocess.run([sys.executable, "-m", "onnxfold", "fuse", str(src), "-o", str(out),
                        "--report", str(rep)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(rep.read_text())
    n_bn, n_folded = EXPECT[name].ops[BN], sum(EXPECT[name].folded.values())
    assert (report["folded"], report["normalizations"]) == (n_folded, n_bn)
    assert Counter(r["code"] for r in report["refusals"]) == Counter(EXPECT[name].refused)
    assert report["check"]["status"] == "pass"
    assert f"folded {n_folded} of {n_bn} BatchNormalization" in p.stdout
    folded = onnx.load(out)
    assert ops(folded)[BN] == n_bn - n_folded
    onnx.checker.check_model(folded, full_check=True)
    assert_parity(exported(name), folded)
