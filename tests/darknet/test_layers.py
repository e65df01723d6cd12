"""Each layer builder against a direct float64 evaluation of darknet's formulas (darknet-notes.md).

The references in ../shared cover the yolov2 family's layers as its cfgs use them; these small
nets also cover what they do not: grouped and strided convs, relu/logistic/linear, maxpools on
odd sizes, reorg with stride 3, region with several anchors.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxfold.darknet import convert_darknet
from tests.darknet.helpers import ops, run_layers, write_cfg, write_weights


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    _, h, wd = x.shape
    n, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, oh, ow))
    ng = n // groups
    for o in range(n):
        g = o // ng
        for i in range(oh):
            for j in range(ow):
                win = xp[g * cg:(g + 1) * cg, i * stride:i * stride + k, j * stride:j * stride + k]
                out[o, i, j] = (win * w[o]).sum()
    return out


def activate(x: np.ndarray, act: str) -> np.ndarray:
    return {"leaky": lambda v: np.where(v > 0, v, 0.1 * v), "linear": lambda v: v,
            "logistic": lambda v: 1 / (1 + np.exp(-v)), "relu": lambda v: np.maximum(v, 0)}[act](x)


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
    y[:, [0, 1, 4]] = 1 / (1 + np.exp(-y[:, [0, 1, 4]]))
    e = np.exp(y[:, 5:] - y[:, 5:].max(1, keepdims=True))
    y[:, 5:] = e / e.sum(1, keepdims=True)
    return y.reshape(c, h, w)


def forward(cfg_layers: list[dict], params: dict, x: np.ndarray, flavour: str) -> list:
    """A float64 darknet forward pass over simple layer descriptions."""
    outs: list[np.ndarray] = []
    for i, d in enumerate(cfg_layers):
        prev = outs[-1] if outs else x
        t = d["type"]
        if t == "conv":
            p = params[i]
            k, n = d["size"], d["filters"]
            w = p["weights"].astype(np.float64).reshape(n, prev.shape[0] // d["groups"], k, k)
            y = conv2d(prev, w, d["stride"], k // 2 if d["pad"] else 0, d["groups"])
            b = p["biases"].astype(np.float64)[:, None, None]
            if d["bn"]:
                g, m, v = (p[key].astype(np.float64)[:, None, None]
                           for key in ("scales", "rolling_mean", "rolling_variance"))
                den = np.sqrt(v) + 1e-6 if flavour == "darknet" else np.sqrt(v + 1e-5)
                y = g * (y - m) / den + b
            else:
                y = y + b
            outs.append(activate(y, d["act"]))
        elif t == "max":
            outs.append(maxpool(prev, d["size"], d["stride"], d["size"] - 1))
        elif t == "route":
            outs.append(np.concatenate([outs[i + j if j < 0 else j] for j in d["layers"]]))
        elif t == "reorg":
            outs.append(reorg(prev, d["stride"]))
        elif t == "region":
            outs.append(region(prev, d["num"], d["classes"]))
    return outs


def cfg_text(layers: list[dict]) -> str:
    parts = []
    for d in layers:
        if d["type"] == "conv":
            parts.append(f"[convolutional]\nbatch_normalize={int(d['bn'])}\nfilters={d['filters']}"
                         f"\nsize={d['size']}\nstride={d['stride']}\npad={d['pad']}\n"
                         f"groups={d['groups']}\nactivation={d['act']}\n")
        elif d["type"] == "max":
            parts.append(f"[maxpool]\nsize={d['size']}\nstride={d['stride']}\n")
        elif d["type"] == "route":
            parts.append("[route]\nlayers=" + ",".join(map(str, d["layers"])) + "\n")
        elif d["type"] == "reorg":
            parts.append(f"[reorg]\nstride={d['stride']}\n")
        else:
            parts.append(f"[region]\nnum={d['num']}\nclasses={d['classes']}\nsoftmax=1\n"
                         "anchors=1,1,2,2,3,3\n")
    return "\n".join(parts)


def conv(filters, size=3, stride=1, pad=1, groups=1, bn=True, act="leaky") -> dict:
    return {"type": "conv", "filters": filters, "size": size, "stride": stride, "pad": pad,
            "groups": groups, "bn": bn, "act": act}


def random_params(layers: list[dict], c: int, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """Weights for each conv (variances with 3 channels ~1e-6) and the flat file contents."""
    params, flat = {}, []
    for i, d in enumerate(layers):
        if d["type"] == "route":
            c = sum(layers[i + j if j < 0 else j]["_c"] for j in d["layers"])
        if d["type"] == "reorg":
            c *= d["stride"] ** 2
        if d["type"] == "conv":
            n, k = d["filters"], d["size"]
            p = {"biases": rng.normal(0, 0.5, n)}
            w = rng.normal(0, np.sqrt(2 / (c // d["groups"] * k * k)),
                           (n, c // d["groups"] * k * k))
            if d["bn"]:
                # 3 nearly dead channels (filters and statistics ~1e-3 and variance ~1e-6, as
                # in trained nets), where the two flavours' formulas differ ~3x
                w[:3] *= 1e-3
                mean, var = rng.normal(0, 0.1, n), rng.uniform(0.5, 2, n)
                mean[:3] *= 1e-3
                var[:3] *= 1e-6
                p |= {"scales": rng.uniform(0.5, 1.5, n), "rolling_mean": mean,
                      "rolling_variance": var}
            p["weights"] = w.ravel()
            p = {key: v.astype(np.float32) for key, v in p.items()}
            params[i] = p
            flat += list(p.values())
            c = n
        d["_c"] = c
    return params, np.concatenate(flat)


CASES = {
    "conv-groups-stride-pools": (17, [
        conv(12, stride=2), conv(12, groups=3, act="relu"), {"type": "max", "size": 2,
                                                             "stride": 1},
        {"type": "max", "size": 3, "stride": 2}, conv(18, size=1, pad=0, act="logistic"),
        conv(5, size=3, pad=0, bn=False, act="linear")]),
    "reorg-route-region": (24, [
        conv(16), {"type": "max", "size": 2, "stride": 2}, conv(17), {"type": "route",
                                                                    "layers": [-3]},
        {"type": "reorg", "stride": 2}, {"type": "route", "layers": [-1, 2]},
        {"type": "reorg", "stride": 3}, conv(3 * 7, size=1, pad=0, bn=False, act="linear"),
        {"type": "region", "num": 3, "classes": 2}]),
}


@pytest.mark.parametrize("flavour", ["darknet", "alexeyab"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_layers_equal_darknet_formulas(tmp_path, case, flavour):
    size, layers = CASES[case]
    rng = np.random.default_rng(7)
    params, flat = random_params(layers, 3, rng)
    cfg = write_cfg(tmp_path / "net.cfg", cfg_text(layers),
                    net=f"width={size}\nheight={size}\nchannels=3")
    weights = write_weights(tmp_path / "net.weights", flat)
    head = "darknet" if layers[-1]["type"] == "region" else "raw"
    conv_ = convert_darknet(cfg, weights, bn_eps=flavour, head=head)
    x = rng.random((1, 3, size, size), dtype=np.float32)
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
    assert np.abs(got[0][0] - wrong).max() / np.abs(wrong).max() > 0.1


def test_op_sequence(tmp_path):
    size, layers = CASES["reorg-route-region"]
    _, flat = random_params(layers, 3, np.random.default_rng(0))
    cfg = write_cfg(tmp_path / "net.cfg", cfg_text(layers),
                    net=f"width={size}\nheight={size}\nchannels=3")
    weights = write_weights(tmp_path / "net.weights", flat)
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
