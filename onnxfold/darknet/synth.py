"""Synthetic darknet weights from a seed, for trying the pipeline without a .weights file.

Conv weights ~ N(0, sqrt(2/fan_in)). BN running statistics are calibrated: each layer is built
on its own (by the same builders as the model) and run in onnxruntime on the previous layer's
output, starting from a seeded image uniform in [0, 1); the statistics are that layer's batch
mean and variance, perturbed a little and rounded to 3 significant digits (so that last-bit
differences between machines do not show). As in trained darknet models, 3 channels per BN layer
are nearly dead: their filters are scaled by 1e-3 and their running variance is ~1e-6, where
darknet's and AlexeyAB's BN formulas differ about 3x.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from onnxfold.darknet.build import OPSET, Plan
from onnxfold.darknet.layers.base import Graph, Layer, Options
from onnxfold.darknet.layers.connected import Connected
from onnxfold.darknet.layers.convolutional import Convolutional
from onnxfold.modelio import model_bytes
from onnxfold.parity.run import session


def synthetic_arrays(p: Plan, seed: int) -> dict[int, dict[str, np.ndarray]]:
    """Weights for every layer of `p`, in the shapes its .weights file would hold."""
    rng = np.random.default_rng(seed)
    s = p.input
    outputs = {-1: rng.random((1, s.c, s.h, s.w), dtype=np.float32)}
    # the same weights whatever flavour is asked for; the head adds nothing to calibrate
    raw = Options("darknet", "raw")
    arrays: dict[int, dict[str, np.ndarray]] = {}
    for layer in p.layers:
        inputs = [outputs[j] for j in layer.sources]
        if isinstance(layer, (Convolutional, Connected)):
            arrays[layer.index] = params = _conv_params(rng, layer, inputs, raw)
        else:
            params = {}
        outputs[layer.index] = _run(layer, inputs, params, raw)[0]
    return arrays


def _conv_params(rng: np.random.Generator, layer: Convolutional | Connected,
                 inputs: list[np.ndarray], opts: Options) -> dict[str, np.ndarray]:
    n = layer.filters
    fan_in = layer.in_channels // layer.groups * layer.size**2
    gain = 2.0 if layer.batch_normalize else 1.0
    w = (rng.standard_normal((n, fan_in)) * math.sqrt(gain / fan_in)).astype(np.float32)
    if not layer.batch_normalize:
        return {"biases": (0.5 * rng.standard_normal(n)).astype(np.float32), "weights": w.ravel()}
    w[rng.choice(n, size=min(3, n), replace=False)] *= np.float32(1e-3)
    neutral = {"biases": np.zeros(n, np.float32), "scales": np.ones(n, np.float32),
               "rolling_mean": np.zeros(n, np.float32), "rolling_variance": np.ones(n, np.float32),
               "weights": w.ravel()}
    if isinstance(layer, Convolutional):
        y = _run(layer, inputs, neutral, opts, f"conv{layer.index}")[1].astype(np.float64)
        mean, var = y.mean(axis=(0, 2, 3)), np.maximum(y.var(axis=(0, 2, 3)), 1e-12)
    else:  # one value per output: statistics of a batch of one, spread like the values
        y = _run(layer, inputs, neutral, opts, f"fc{layer.index}")[1].astype(np.float64)[0]
        mean, var = y, np.full(n, max(float(y.var()), 1e-12))
        var[np.abs(w).sum(axis=1) < 1e-2] = 1e-6
    return {
        "biases": (0.3 * rng.standard_normal(n)).astype(np.float32),
        "scales": rng.uniform(0.5, 1.5, n).astype(np.float32),
        "rolling_mean": _sig3(mean + 0.1 * np.sqrt(var) * rng.standard_normal(n)),
        "rolling_variance": _sig3(var * rng.uniform(0.7, 1.4, n)),
        "weights": w.ravel(),
    }


def _run(layer: Layer, inputs: list[np.ndarray], params: dict[str, np.ndarray], opts: Options,
         extra: str | None = None) -> list[np.ndarray]:
    """Run one layer alone in onnxruntime: [its output] (+ [the tensor named `extra`])."""
    g = Graph()
    names = [f"in{k}" for k in range(len(inputs))]
    out = layer.emit(g, names, params, opts)
    if out in names:  # a layer that adds no node
        return [inputs[names.index(out)]]
    outs = [out, *([extra] if extra else [])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names + outs]
    graph = helper.make_graph(g.nodes, "layer", vi[:len(names)], vi[len(names):],
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 7
    sess = session(model_bytes(model))
    return sess.run(outs, dict(zip(names, inputs)))


def _sig3(x: np.ndarray) -> np.ndarray:
    """Round to 3 significant digits, as float32."""
    e = np.floor(np.log10(np.maximum(np.abs(x), 1e-30))) - 2
    return (np.round(x / 10.0**e) * 10.0**e).astype(np.float32)
