"""Each layer builder against a direct float64 evaluation of darknet's formulas (darknet-notes.md).

The references in ../shared cover the layers as their cfgs use them; these small nets also
cover what they do not: grouped, strided, dilated and 1-D strided convs, every activation,
maxpools on odd sizes, reorg with stride 3, region with several anchors, pj's shortcut between
maps of different size with alpha/beta, upsample with scale, route groups, softmax groups and
temperature, connected layers with BN (and transposed in the file), yolo with scale_x_y.
"""

from __future__ import annotations

import struct

import numpy as np
import onnx
import pytest

import onnxfold
from onnxfold.darknet import convert_darknet, load_plan
from onnxfold.errors import OnnxfoldError
from onnxfold.parity import check_parity
from tests.darknet.helpers import ops, run_layers, write_cfg, write_weights


def conv2d(x: np.ndarray, w: np.ndarray, stride: tuple[int, int], pad: int, groups: int,
           dilation: int = 1) -> np.ndarray:
    _, h, wd = x.shape
    n, cg, k, _ = w.shape
    sy, sx = stride
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    span = dilation * (k - 1) + 1
    oh, ow = (h + 2 * pad - span) // sy + 1, (wd + 2 * pad - span) // sx + 1
    out = np.zeros((n, oh, ow))
    ng = n // groups
    for g in range(groups):
        for a in range(k):
            for b in range(k):
                y0, x0 = a * dilation, b * dilation
                patch = xp[g * cg:(g + 1) * cg, y0:y0 + sy * (oh - 1) + 1:sy,
                           x0:x0 + sx * (ow - 1) + 1:sx]
                out[g * ng:(g + 1) * ng] += np.einsum("oc,chw->ohw",
                                                      w[g * ng:(g + 1) * ng, :, a, b], patch)
    return out


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def softplus(v: np.ndarray) -> np.ndarray:
    """ab's softplus_activate with threshold 20."""
    return np.where(v > 20, v, np.where(v < -20, np.exp(v), np.log1p(np.exp(np.minimum(v, 20)))))


ACT = {
    "leaky": lambda v: np.where(v > 0, v, 0.1 * v), "linear": lambda v: v,
    "logistic": sigmoid, "relu": lambda v: np.maximum(v, 0), "tanh": np.tanh,
    "relu6": lambda v: np.clip(v, 0, 6), "swish": lambda v: v * sigmoid(v),
    "mish": lambda v: v * np.tanh(softplus(v)),
    "hard_mish": lambda v: np.where(v > 0, v, np.where(v > -2, v * v / 2 + v, 0)),
    "gelu": lambda v: 0.5 * v * (1 + np.tanh(0.797885 * v + 0.035677 * v**3)),
}


def maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """darknet: window at -(padding/2), out = (in + padding - size)/stride + 1, outside = -inf."""
    c, h, w = x.shape
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = padding // 2
    out = np.full((c, oh, ow), -np.inf)
    for i in range(oh):
        for j in range(ow):
            for a in range(size):
                for b in range(size):
                    y, z = i * stride - off + a, j * stride - off + b
                    if 0 <= y < h and 0 <= z < w:
                        out[:, i, j] = np.maximum(out[:, i, j], x[:, y, z])
    return out


def reorg(x: np.ndarray, s: int) -> np.ndarray:
    """out[k*H*W + j*W + i] = view[k % (C/s^2)][j*s + (k/(C/s^2))/s][i*s + (k/(C/s^2))%s]."""
    c, h, w = x.shape
    oc = c // (s * s)
    view = x.reshape(oc, h * s, w * s)
    out = np.empty((c, h, w))
    for k in range(c):
        off = k // oc
        for j in range(h):
            for i in range(w):
                out[k, j, i] = view[k % oc, j * s + off // s, i * s + off % s]
    return out.reshape(c * s * s, h // s, w // s)


def region(x: np.ndarray, num: int, classes: int) -> np.ndarray:
    c, h, w = x.shape
    y = x.reshape(num, 5 + classes, h, w).copy()
    y[:, [0, 1, 4]] = sigmoid(y[:, [0, 1, 4]])
    e = np.exp(y[:, 5:] - y[:, 5:].max(1, keepdims=True))
    y[:, 5:] = e / e.sum(1, keepdims=True)
    return y.reshape(c, h, w)


def yolo(x: np.ndarray, n: int, scale: float) -> np.ndarray:
    c, h, w = x.shape
    y = x.reshape(n, c // n, h, w).copy()
    y[:, [0, 1]] = sigmoid(y[:, [0, 1]]) * scale - 0.5 * (scale - 1)
    y[:, 4:] = sigmoid(y[:, 4:])
    return y.reshape(c, h, w)


def shortcut(out: np.ndarray, add: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """pj's shortcut_cpu loop, literally: out[k, j*sample, i*sample] = alpha*out + beta*add[k,
    j*stride, i*stride] for k < min(C), j < min(H), i < min(W)."""
    c2, h2, w2 = out.shape
    c1, h1, w1 = add.shape
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    out = out.copy()
    for k in range(min(c1, c2)):
        for j in range(min(h1, h2)):
            for i in range(min(w1, w2)):
                o = out[k, j * sample, i * sample]
                out[k, j * sample, i * sample] = alpha * o + beta * add[k, j * stride, i * stride]
    return out


def batchnorm(y: np.ndarray, p: dict, flavour: str) -> np.ndarray:
    shape = (-1,) + (1,) * (y.ndim - 1)
    g, m, v, b = (p[k].astype(np.float64).reshape(shape)
                  for k in ("scales", "rolling_mean", "rolling_variance", "biases"))
    den = np.sqrt(v) + 1e-6 if flavour == "darknet" else np.sqrt(v + 1e-5)
    return g * (y - m) / den + b


def make_params(d: dict, fan_in: int, n: int, rng: np.random.Generator) -> dict:
    """Weights of a conv or connected layer: with BN, 3 channels have variance ~1e-6."""
    p = {"biases": rng.normal(0, 0.5, n)}
    w = rng.normal(0, np.sqrt(2 / fan_in), (n, fan_in)) * d.get("_gain", 1)
    if d.get("batch_normalize"):
        w[:3] *= 1e-3
        mean, var = rng.normal(0, 0.1, n), rng.uniform(0.5, 2, n)
        mean[:3] *= 1e-3
        var[:3] *= 1e-6
        p |= {"scales": rng.uniform(0.5, 1.5, n), "rolling_mean": mean, "rolling_variance": var}
    p["weights"] = w
    return {k: v.astype(np.float32) for k, v in p.items()}


def file_order(d: dict, p: dict) -> list[np.ndarray]:
    bn = ["scales", "rolling_mean", "rolling_variance"] if "scales" in p else []
    keys = (["biases", "weights", *bn] if d["type"] == "connected"
            else ["biases", *bn, "weights"])
    return [p[k].ravel() for k in keys]


def forward(layers: list[dict], params: dict, x: np.ndarray, flavour: str,
            rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """A float64 darknet forward pass; makes each layer's weights with `rng` if not in params."""
    outs: list[np.ndarray] = []
    for i, d in enumerate(layers):
        prev = outs[-1] if outs else x
        t = d["type"]
        if t in ("convolutional", "connected"):
            if t == "convolutional":
                k, n, groups = d["size"], d["filters"], d.get("groups", 1)
                fan_in = prev.shape[0] // groups * k * k
            else:
                n, fan_in = d["output"], prev.size
            if i not in params:
                params[i] = make_params(d, fan_in, n, rng)
            p = params[i]
            if t == "convolutional":
                dil = d.get("dilation", 1)
                w = p["weights"].astype(np.float64).reshape(n, fan_in // (k * k), k, k)
                pad = (k // 2 if d["pad"] else 0) * dil
                stride = (d.get("stride_y", d["stride"]), d.get("stride_x", d["stride"]))
                y = conv2d(prev, w, stride, pad, groups, dil)
            else:
                y = (p["weights"].astype(np.float64) @ prev.ravel())[:, None, None]
            if d.get("batch_normalize"):
                y = batchnorm(y, p, flavour)
            else:
                y = y + p["biases"].astype(np.float64)[:, None, None]
            outs.append(ACT[d.get("activation", "logistic")](y))
        elif t == "maxpool":
            s = d.get("stride", 1)
            k = d.get("size", s)
            outs.append(maxpool(prev, k, s, d.get("padding", k - 1)))
        elif t == "route":
            g, gid = d.get("groups", 1), d.get("group_id", 0)
            parts = [outs[i + j if j < 0 else j] for j in d["layers"]]
            outs.append(np.concatenate([q[gid * len(q) // g:(gid + 1) * len(q) // g]
                                        for q in parts]))
        elif t == "shortcut":
            j = d["from"]
            y = shortcut(prev, outs[i + j if j < 0 else j], d.get("alpha", 1), d.get("beta", 1))
            outs.append(ACT[d.get("activation", "linear")](y))
        elif t == "upsample":
            s = d.get("stride", 2)
            outs.append(prev.repeat(s, 1).repeat(s, 2) * d.get("scale", 1))
        elif t == "avgpool":
            outs.append(prev.mean(axis=(1, 2), keepdims=True))
        elif t == "softmax":
            v = prev.reshape(d.get("groups", 1), -1) / d.get("temperature", 1)
            e = np.exp(v - v.max(1, keepdims=True))
            outs.append((e / e.sum(1, keepdims=True)).reshape(-1, 1, 1))
        elif t in ("dropout", "cost"):
            outs.append(prev)
        elif t == "reorg":
            outs.append(reorg(prev, d["stride"]))
        elif t == "region":
            outs.append(region(prev, d["num"], d["classes"]))
        elif t == "yolo":
            outs.append(yolo(prev, len(d["mask"]), d.get("scale_x_y", 1)))
        else:
            raise AssertionError(t)
    return outs


def cfg_text(layers: list[dict]) -> str:
    """Each dict as a section: its keys (lists comma-joined), `_`-keys left out."""
    parts = []
    for d in layers:
        keys = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in d.items() if k != "type" and not k.startswith("_")]
        parts.append("\n".join([f"[{d['type']}]", *keys]) + "\n")
    return "\n".join(parts)


def conv(filters, size=3, stride=1, pad=1, groups=1, bn=True, act="leaky", **keys) -> dict:
    return {"type": "convolutional", "batch_normalize": int(bn), "filters": filters,
            "size": size, "stride": stride, "pad": pad, "groups": groups, "activation": act,
            **keys}


def pool(size, stride, **keys) -> dict:
    return {"type": "maxpool", "size": size, "stride": stride, **keys}


def flat_weights(layers: list[dict], params: dict) -> np.ndarray:
    return np.concatenate([a for i in sorted(params) for a in file_order(layers[i], params[i])])


REGION = {"type": "region", "num": 3, "classes": 2, "softmax": 1, "anchors": [1, 1, 2, 2, 3, 3]}
YOLO = {"type": "yolo", "classes": 2, "num": 4, "anchors": [1, 2, 3, 4, 5, 6, 7, 8]}
BOTH, AB = ("darknet", "alexeyab"), ("alexeyab",)
# name: (input size, layers, flavours it is valid in)
CASES = {
    "conv-groups-stride-pools": (17, [
        conv(12, stride=2), conv(12, groups=3, act="relu"), pool(2, 1), pool(3, 2),
        conv(18, size=1, pad=0, act="logistic"), conv(5, size=3, pad=0, bn=False, act="linear")],
        BOTH),
    "reorg-route-region": (24, [
        conv(16), pool(2, 2), conv(17), {"type": "route", "layers": [-3]},
        {"type": "reorg", "stride": 2}, {"type": "route", "layers": [-1, 2]},
        {"type": "reorg", "stride": 3}, conv(3 * 7, size=1, pad=0, bn=False, act="linear"),
        REGION], BOTH),
    # yolov3's pieces: residual shortcuts with activations, upsample with scale, SPP maxpools,
    # two yolo heads (mask) whose outputs are the model's, tanh
    "shortcut-upsample-spp-yolo": (16, [
        conv(8), conv(4, size=1, pad=0), conv(8, act="tanh"),
        {"type": "shortcut", "from": -3, "activation": "leaky"},
        pool(5, 1), {"type": "route", "layers": [-1, -2]}, pool(9, 1),
        {"type": "route", "layers": [-1, -3, -4]}, conv(14, size=1, pad=0, bn=False,
                                                       act="linear"),
        {**YOLO, "mask": [2, 3]}, {"type": "route", "layers": [-3]}, conv(6, stride=2),
        {"type": "upsample", "stride": 2, "scale": 0.5},
        {"type": "shortcut", "from": 0, "activation": "linear"},
        conv(7, size=1, pad=0, bn=False, act="linear"), {**YOLO, "mask": [0]}], BOTH),
    # pj's rule for maps of different shape (resnet50): more channels and twice the size
    # (sampled), fewer channels and half the size (spread), alpha and beta
    "pj-shortcut-shapes": (16, [
        conv(12), conv(6, stride=2), {"type": "shortcut", "from": -2},
        conv(12, size=1, pad=0), {"type": "upsample", "stride": 2},
        {"type": "shortcut", "from": -3, "alpha": 0.5, "beta": 2, "activation": "relu"},
        conv(12, size=3, stride=1), {"type": "maxpool", "size": 4, "stride": 4},
        {"type": "shortcut", "from": 1, "activation": "logistic"}], ("darknet",)),
    # what only the AlexeyAB fork computes: route groups (yolov4-tiny), its activations,
    # dilation, stride_x/stride_y, scale_x_y, a 1x1 conv with stride 2
    "ab-only": (16, [
        conv(8, act="mish"), {"type": "route", "layers": [-1], "groups": 2, "group_id": 1},
        conv(8, act="swish", dilation=2), conv(8, bn=False, act="relu6", _gain=12),
        {"type": "route", "layers": [-1, -2], "groups": 4, "group_id": 2},
        conv(6, act="hard_mish", stride_x=2), conv(6, act="gelu", stride_y=2, stride_x=1),
        {"type": "shortcut", "from": -1, "activation": "mish"},
        conv(6, size=1, pad=0, stride=2, act="swish"),
        conv(7, size=1, pad=0, bn=False, act="linear"), {**YOLO, "mask": [1], "scale_x_y": 1.1}],
        AB),
    # a classifier: global average, connected layers (one with BN), dropout, softmax groups
    "classifier": (9, [
        conv(8, stride=2), {"type": "avgpool"}, {"type": "route", "layers": [0]},
        {"type": "connected", "output": 10, "batch_normalize": 1, "activation": "leaky"},
        {"type": "dropout", "probability": 0.5},
        {"type": "connected", "output": 6, "activation": "linear"},
        {"type": "softmax", "groups": 2, "temperature": 0.5}], BOTH),
}
FLAVOUR_CASES = [(c, f) for c in sorted(CASES) for f in CASES[c][2]]


def build(tmp_path, case: str, seed: int = 7) -> tuple:
    size, layers, _ = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.random((1, 3, size, size), dtype=np.float32)
    params: dict = {}
    forward(layers, params, x[0].astype(np.float64), "alexeyab", rng)
    cfg = write_cfg(tmp_path / "net.cfg", cfg_text(layers),
                    net=f"width={size}\nheight={size}\nchannels=3")
    weights = write_weights(tmp_path / "net.weights", flat_weights(layers, params))
    return layers, params, x, cfg, weights


@pytest.mark.parametrize(("case", "flavour"), FLAVOUR_CASES)
def test_layers_equal_darknet_formulas(tmp_path, case, flavour):
    layers, params, x, cfg, weights = build(tmp_path, case)
    conv_ = convert_darknet(cfg, weights, bn_eps=flavour, head="darknet")
    onnx.checker.check_model(conv_.model, full_check=True)
    got = run_layers(conv_, x)
    want = forward(layers, params, x[0].astype(np.float64), flavour)
    assert len(got) == len(want)
    for i, w in enumerate(want):
        g = got[i][0]
        assert g.shape == w.shape, (i, layers[i]["type"])
        err = np.abs(g - w).max() / np.abs(w).max()
        assert err <= 1e-5, (i, layers[i]["type"], err)
    # the other flavour's formula is far off on the tiny-variance channels
    other = "alexeyab" if flavour == "darknet" else "darknet"
    wrong = forward(layers, params, x[0].astype(np.float64), other)[0]
    assert np.abs(got[0][0] - wrong).max() / np.abs(wrong).max() > 0.01


@pytest.mark.parametrize(("case", "flavour"), FLAVOUR_CASES)
def test_fuse_folds_every_batchnorm(tmp_path, case, flavour):
    """Conv/Gemm -> BatchNormalization -> activation stays the pattern: fuse folds them all."""
    layers, _, _, cfg, weights = build(tmp_path, case)
    model = convert_darknet(cfg, weights, bn_eps=flavour).model
    result = onnxfold.fuse(model)
    assert ops(model)["BatchNormalization"] == sum(d.get("batch_normalize", 0) for d in layers)
    assert "BatchNormalization" not in ops(result.model)
    assert not result.refused
    assert check_parity(model, result.model).status == "pass"


def test_activation_ops(tmp_path):
    """Each activation after Conv -> BatchNormalization, in ops every runtime has at opset 13."""
    _, _, _, cfg, weights = build(tmp_path, "ab-only")
    counts = ops(convert_darknet(cfg, weights, bn_eps="alexeyab", head="raw").model)
    assert counts == {"Conv": 7, "BatchNormalization": 5, "Softplus": 2, "Tanh": 3,
                      "Mul": 10, "Sigmoid": 2, "Clip": 1, "HardSigmoid": 1, "Add": 3,
                      "Slice": 3, "Identity": 1, "Concat": 1}


def test_yolo_outputs_in_cfg_order(tmp_path):
    _, _, x, cfg, weights = build(tmp_path, "shortcut-upsample-spp-yolo")
    for head in ("darknet", "raw"):
        conv_ = convert_darknet(cfg, weights, head=head)
        assert [o.name for o in conv_.model.graph.output] == ["output0", "output1"]
        assert [[d.dim_value for d in o.type.tensor_type.shape.dim]
                for o in conv_.model.graph.output] == [[1, 14, 16, 16], [1, 7, 16, 16]]
        assert conv_.plan.outputs == [9, 15]
        got = run_layers(conv_, x)
        src = 8 if head == "raw" else 9
        from onnxfold.parity.run import session

        out0 = session(conv_.model.SerializeToString()).run(["output0"], {"images": x})[0]
        np.testing.assert_array_equal(out0, got[src])
    meta = {p.key: p.value for p in conv_.model.metadata_props}
    assert (meta["darknet.masks"], meta["darknet.classes"]) == ("2,3;0", "2,2")


@pytest.mark.parametrize("flavour", BOTH)
def test_transposed_connected_weights(tmp_path, flavour):
    """major > 1000: connected weights are stored inputs x outputs. pj then reads a 16-byte
    header (its 64-bit `seen` needs major < 1000), ab a 20-byte one."""
    layers, params, x, cfg, weights = build(tmp_path, "classifier")
    want = run_layers(convert_darknet(cfg, weights, bn_eps=flavour), x)
    body = []
    for i in sorted(params):
        p = dict(params[i])
        if layers[i]["type"] == "connected":
            p["weights"] = p["weights"].T.copy()
        body += file_order(layers[i], p)
    seen = struct.pack("<I", 7) if flavour == "darknet" else struct.pack("<Q", 7)
    t = tmp_path / "t.weights"
    t.write_bytes(struct.pack("<iii", 1001, 2, 0) + seen
                  + np.concatenate(body).astype("<f4").tobytes())
    got = run_layers(convert_darknet(cfg, t, bn_eps=flavour), x)
    for i in want:
        np.testing.assert_array_equal(got[i], want[i])


SMALL = "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n"


@pytest.mark.parametrize(("body", "line", "message"), [
    (SMALL + "[sam]\nfrom=-1\n", 12, "[sam] layer 1"),
    (SMALL + "[scale_channels]\nfrom=-1\n", 12, "[scale_channels] layer 1"),
    (SMALL + "[local]\nfilters=2\n", 12, "[local] layer 1"),
    (SMALL + "[Gaussian_yolo]\nmask=0\n", 12, "[Gaussian_yolo] layer 1"),
    (SMALL + "[crnn]\n", 12, "[crnn] layer 1"),
    (SMALL + "[lstm]\noutput=4\n", 12, "[lstm] layer 1"),
    (SMALL + "[batchnorm]\n", 12, "[batchnorm] layer 1"),
])
def test_unsupported_layers_are_refused(tmp_path, body, line, message):
    p = write_cfg(tmp_path / "x.cfg", body)
    kind = message.split("]")[0] + "]"
    with pytest.raises(OnnxfoldError) as e:
        load_plan(p, bn_eps="alexeyab")
    assert str(e.value) == (
        f"{p}:{line}: {message}: expected a layer onnxfold converts ([convolutional], "
        "[connected], [maxpool], [avgpool], [route], [shortcut], [upsample], [reorg], [softmax], "
        f"[dropout], [cost], [region], [yolo]), found {kind}, not supported")


PJ = "with --bn-eps darknet (the original darknet: "
HINT = "; convert with --bn-eps alexeyab for the AlexeyAB fork)"


@pytest.mark.parametrize(("flavour", "body", "line", "message"), [
    ("alexeyab", SMALL + "[shortcut]\nfrom=-1,0\n", 13,
     "[shortcut] layer 1, key 'from': expected one layer (onnxfold converts shortcuts of two "
     "layers), found -1,0"),
    ("alexeyab", SMALL + "[shortcut]\nfrom=-1\nweights_type=per_channel\n", 14,
     "[shortcut] layer 1, key 'weights_type': expected weights_type=none (weighted shortcuts "
     "are not supported by onnxfold convert), found weights_type=per_channel"),
    ("alexeyab", SMALL + "[maxpool]\nsize=2\nstride=2\n\n[shortcut]\nfrom=-2\n", 17,
     "[shortcut] layer 2, key 'from': expected a layer of this one's width and height 4x4 (the "
     "AlexeyAB fork aborts on others; the original darknet, --bn-eps darknet, samples), found "
     "layer 0 of 4x8x8"),
    ("darknet", SMALL + "[shortcut]\nfrom=-1\nactivation=swish\n", 14,
     f"[shortcut] layer 1, key 'activation': expected an activation the original darknet knows "
     f"{PJ}it runs 'swish' as ReLU{HINT}, found 'swish'"),
    ("alexeyab", SMALL + "[upsample]\nstride=-2\n", 13,
     "[upsample] layer 1, key 'stride': expected a positive stride (onnxfold converts "
     "upsampling only), found -2"),
    ("alexeyab", SMALL + "[softmax]\ntree=data/9k.tree\n", 13,
     "[softmax] layer 1, key 'tree': expected no softmax tree (not supported by onnxfold "
     "convert), found tree=data/9k.tree"),
    ("alexeyab", SMALL + "[softmax]\ngroups=3\n", 13,
     "[softmax] layer 1, key 'groups': expected a divisor of the layer's 256 inputs, found 3"),
    ("alexeyab", SMALL + "[route]\nlayers=-1\ngroups=2\ngroup_id=2\n", 15,
     "[route] layer 1, key 'group_id': expected a group below groups=2, found 2"),
    ("alexeyab", SMALL + "[route]\nlayers=-1\ngroups=3\n", 14,
     "[route] layer 1, key 'groups': expected a divisor of every source's channels (layer 0 "
     "has 4), found 3"),
    ("alexeyab", "[convolutional]\nfilters=12\nsize=1\n\n[yolo]\nmask=0,1\nnum=2\nclasses=2\n",
     10,
     "[yolo] layer 1: expected an input of len(mask)*(4+1+classes) = 2*(4+1+2) = 14 channels, "
     "found 12 (input 12x8x8)"),
    # no mask: every one of num anchors (num is not turned into a list before the check)
    ("alexeyab", "[convolutional]\nfilters=7\nsize=1\n\n[yolo]\nnum=2000000000\nclasses=2\n",
     10, "[yolo] layer 1: expected an input of num*(4+1+classes) = 2000000000*(4+1+2) = "
     "14000000000 channels, found 7 (input 7x8x8)"),
    ("alexeyab", "[convolutional]\nfilters=7\nsize=1\n\n[yolo]\nmask=3\nnum=3\nclasses=2\n",
     11, "[yolo] layer 1, key 'mask': expected anchor indices in 0..2 (num=3), found 3"),
    ("alexeyab", "[convolutional]\nfilters=7\nsize=1\n\n[yolo]\nclasses=2\nnew_coords=1\n",
     12, "[yolo] layer 1, key 'new_coords': expected new_coords=0 (not supported by onnxfold "
     "convert), found new_coords=1"),
    ("darknet", "[convolutional]\nfilters=7\nsize=1\n\n[yolo]\nclasses=2\nscale_x_y=1.05\n",
     12, f"[yolo] layer 1, key 'scale_x_y': expected scale_x_y=1 {PJ}it ignores scale_x_y{HINT}"
     ", found scale_x_y=1.05"),
    ("darknet", "[connected]\noutput=4\nactivation=gelu\n", 8,
     f"[connected] layer 0, key 'activation': expected an activation the original darknet "
     f"knows {PJ}it runs 'gelu' as ReLU{HINT}, found 'gelu'"),
    ("darknet", "[convolutional]\nfilters=4\nsize=3\ndilation=2\n", 9,
     f"[convolutional] layer 0, key 'dilation': expected dilation=1 {PJ}it does not read the "
     f"key{HINT}, found dilation=2"),
    ("alexeyab", "[convolutional]\nfilters=4\nsize=3\ndilation=2\n", 9,
     "[convolutional] layer 0, key 'dilation': expected a dilation whose output size equals "
     "the layer's 6x6 (darknet sizes the layer without dilation), found dilation=2, which "
     "gives 4x4"),
    ("darknet", "[convolutional]\nfilters=4\nsize=1\nstride=2\n", 9,
     f"[convolutional] layer 0, key 'stride': expected stride=1 for a 1x1 conv {PJ}it reads a "
     f"1x1 conv's input unstrided{HINT}, found stride=2"),
    ("alexeyab", "[convolutional]\nfilters=4\nsize=1\npadding=1\n", 9,
     "[convolutional] layer 0, key 'padding': expected a 1x1 conv whose output is its input's "
     "size 8x8 (darknet reads its input as is), found 10x10"),
    ("alexeyab", "[convolutional]\nfilters=4\nsize=1\nstride_y=2\n", 9,
     "[convolutional] layer 0, key 'stride_y': expected a 1x1 conv whose output is its input's "
     "size 8x8 (darknet reads its input as is), found 4x8"),
])
def test_layer_refusals(tmp_path, flavour, body, line, message):
    p = write_cfg(tmp_path / "x.cfg", body)
    with pytest.raises(OnnxfoldError) as e:
        load_plan(p, bn_eps=flavour)
    assert str(e.value) == f"{p}:{line}: {message}"


def test_pj_shortcut_of_different_factors_is_refused(tmp_path):
    p = write_cfg(tmp_path / "x.cfg", SMALL + "[maxpool]\nsize=2\nstride=2\n\n"
                  "[shortcut]\nfrom=-2\n", net="width=8\nheight=16\nchannels=3")
    assert load_plan(p, bn_eps="darknet").layers[-1].out.h == 8
    p = write_cfg(tmp_path / "y.cfg", SMALL + "[convolutional]\nfilters=4\nsize=3\n"
                  "stride=2\npad=1\n\n[shortcut]\nfrom=-2\n",
                  net="width=8\nheight=5\nchannels=3")
    with pytest.raises(OnnxfoldError) as e:
        load_plan(p, bn_eps="darknet")
    assert str(e.value) == (
        f"{p}:19: [shortcut] layer 2, key 'from': expected a layer whose size relates to 3x4 by "
        "the same factor in height and width (darknet asserts it), found layer 0 of 4x5x8")


def test_op_sequence(tmp_path):
    _, _, _, cfg, weights = build(tmp_path, "reorg-route-region", seed=0)
    model = convert_darknet(cfg, weights).model
    assert ops(model) == {"Conv": 3, "BatchNormalization": 2, "LeakyRelu": 2, "MaxPool": 1,
                          "Identity": 1, "Reshape": 6, "SpaceToDepth": 2, "Concat": 2,
                          "Split": 1, "Sigmoid": 2, "Softmax": 1}
    bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert [a.f for n in bn for a in n.attribute if a.name == "epsilon"] == [0.0, 0.0]
    model = convert_darknet(cfg, weights, bn_eps="alexeyab", head="raw").model
    bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert [a.f for n in bn for a in n.attribute if a.name == "epsilon"] == pytest.approx(
        [1e-5, 1e-5])
    assert "Softmax" not in ops(model)
