"""ConvTranspose → BatchNormalization: output channels sit on weight axis 1, per group."""

from __future__ import annotations

import numpy as np
import onnx

from onnxfold.fold import bn_math
from onnxfold.fold.rules.conv_bn import ConvBatchNorm
from onnxfold.graph import attrs


class ConvTransposeBatchNorm(ConvBatchNorm):
    name = "ConvTranspose+BatchNormalization"
    summary = "ConvTranspose -> BN: weight slices scaled per output channel and group"
    producers = ("ConvTranspose",)
    sliced = False

    def out_channels(self, w: np.ndarray, node: onnx.NodeProto) -> int | None:
        group = attrs(node).get("group", 1)
        if w.ndim < 3 or group < 1 or w.shape[0] % group:
            return None
        return w.shape[1] * group

    def fold_weight(self, w, b, s, t, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        return bn_math.fold_conv_transpose(w, b, s, t, attrs(node).get("group", 1))
