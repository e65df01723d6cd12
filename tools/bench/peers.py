"""One tool's whole job on one model, as its own process: load, fold BatchNormalization, save.

Usage: python tools/bench/peers.py TOOL IN.onnx OUT.onnx
TOOL: floor (onnx.load + onnx.save, the floor), onnxoptimizer, onnxsim, onnxslim, onnxscript,
ort-basic. An input with external data is written with external data (`OUT.onnx.data`).
Run with the peers' environment (see README, "Benchmark"); onnxfold runs as its own CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _external(path: str) -> bool:
    return Path(path + ".data").exists()


def _load(path: str):
    import onnx

    return onnx.load(path)  # reads external data in, as each of these tools needs


def _save(model, out: str, external: bool) -> None:
    import onnx

    if external:
        onnx.save(model, out, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=Path(out).name + ".data", size_threshold=1024)
    else:
        onnx.save(model, out)


def floor(src: str, out: str) -> None:
    _save(_load(src), out, _external(src))


def onnxoptimizer(src: str, out: str) -> None:
    import onnxoptimizer as oo

    _save(oo.optimize(_load(src), ["fuse_bn_into_conv"]), out, _external(src))


def onnxsim(src: str, out: str) -> None:
    import onnxsim as sim

    model, _ = sim.simplify(_load(src), check_n=0)
    _save(model, out, _external(src))


def onnxslim(src: str, out: str) -> None:
    import onnxslim as slim

    _save(slim.slim(_load(src)), out, _external(src))


def onnxscript(src: str, out: str) -> None:
    """onnxscript's rewriter with its three BatchNormalization fusion rules, on onnx-ir (which
    memory-maps external data and writes it tensor by tensor)."""
    import onnx_ir as ir
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.rules.common import (
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    )

    model = ir.load(src)
    rules = [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule,
             fuse_batchnorm_into_gemm_rule]
    model = rewrite(model, pattern_rewrite_rules=rules)
    data = Path(out).name + ".data" if _external(src) else None
    ir.save(model, out, external_data=data, size_threshold_bytes=1024)


def ort_basic(src: str, out: str) -> None:
    """onnxruntime's basic level (it folds Conv+BN) writing the optimized model."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = out
    if _external(src):
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", Path(out).name + ".data")
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


TOOLS = {"floor": floor, "onnxoptimizer": onnxoptimizer, "onnxsim": onnxsim,
         "onnxslim": onnxslim, "onnxscript": onnxscript, "ort-basic": ort_basic}

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in TOOLS:
        sys.exit(__doc__)
    TOOLS[sys.argv[1]](sys.argv[2], sys.argv[3])
