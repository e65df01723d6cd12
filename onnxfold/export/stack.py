"""The export stack: pinned versions, finding the tools, and installing them (`--install`).

onnx2tf 1.29.24 pins protobuf 4.25.5, while tensorflowjs imports TF Decision Forests, whose ydf
needs protobuf >= 5.29.1: no single pip resolve (and so no pyproject extra) holds both. The install
is three steps: onnx2tf with its pins, the converter's dependencies at versions measured to import
together, then tensorflowjs itself without dependencies (it would pull flax and packaging~=23.1,
which nothing here needs).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from onnxfold.errors import OnnxfoldError

# Step 1 (resolved by pip): brings TensorFlow 2.19.0, tf-keras, ai-edge-litert 2.1.0, onnx 1.19.1,
# onnxruntime 1.23.0 and numpy 1.26.4 — onnxfold's own lower bounds.
ONNX2TF = ["onnx2tf==1.29.24"]
# Step 2 (resolved by pip): what tensorflowjs_converter imports. ydf 0.16 (pulled by a plain
# `pip install tensorflowjs`) breaks the converter at import; setuptools 81+ has no pkg_resources,
# which tensorflow_hub imports.
TFJS_DEPS = [
    "tensorflow-hub==0.16.1", "tensorflow-decision-forests==1.12.0", "ydf==0.15.0",
    "protobuf==5.29.6", "pandas==2.3.3", "wurlitzer==3.1.1", "jax==0.4.38", "jaxlib==0.4.38",
    "importlib_resources==7.1.0", "setuptools==80.9.0", "numpy==1.26.4",
]
# Step 3 (--no-deps).
TFJS = ["tensorflowjs==4.22.0"]

JS_DIR = Path(__file__).resolve().parent / "js"
JS_PACKAGES = ["tfjs-core", "tfjs-converter", "tfjs-backend-cpu", "tfjs-backend-wasm",
               "tfjs-backend-webgl"]  # webgl: only the --demo page uses it
# Drives the system Chromium in the --demo page's tests (a devDependency: it downloads no browser).
PLAYWRIGHT_CORE = "1.65.1"
INSTALL_HINT = "onnxfold export --install"

# What each target needs: (import name, distribution name).
_PY_TOOLS = {
    "tf": [("onnx2tf", "onnx2tf"), ("tensorflow", "tensorflow")],
    "tflite": [("onnx2tf", "onnx2tf"), ("ai_edge_litert", "ai-edge-litert")],
    "tfjs": [("onnx2tf", "onnx2tf"), ("tensorflowjs", "tensorflowjs"),
             ("tensorflow_decision_forests", "tensorflow-decision-forests")],
}


def require(targets: list[str]) -> None:
    """Raise OnnxfoldError (exit 2) naming the first tool a target needs and does not have."""
    for target in targets:
        for module, dist in _PY_TOOLS[target]:
            if importlib.util.find_spec(module) is None:
                raise OnnxfoldError(
                    dist, f"{dist} in {sys.executable} for --to {target} (install the export "
                    f"stack with: {INSTALL_HINT})", "not installed")
    if "tfjs" in targets:
        node_path()
        for name in JS_PACKAGES:
            if not (JS_DIR / "node_modules" / "@tensorflow" / name / "package.json").is_file():
                raise OnnxfoldError(
                    JS_DIR / "node_modules", f"@tensorflow/{name} for the TF.js check (install "
                    f"with: {INSTALL_HINT})", "not installed")


def node_path() -> str:
    node = shutil.which("node")
    if node is None:
        raise OnnxfoldError("node", "Node.js >= 18 on PATH, which runs the TF.js check",
                            "no node command")
    return node


def versions(targets: list[str]) -> dict[str, str]:
    """Versions of the tools this export uses (they go into the report)."""
    dists = ["onnx2tf", "tensorflow", "onnx", "onnxruntime", "numpy"]
    if "tflite" in targets:
        dists.append("ai-edge-litert")
    if "tfjs" in targets:
        dists.append("tensorflowjs")
    out = {}
    for d in dists:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = "not installed"
    return out


def install(log=print) -> None:
    """Install the pinned export stack into this Python, and the TF.js packages with npm ci."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    steps = [
        ([*pip, *ONNX2TF], None),
        ([*pip, *TFJS_DEPS], None),
        ([*pip, "--no-deps", *TFJS], None),
    ]
    npm = shutil.which("npm")
    if npm is None:
        raise OnnxfoldError("npm", "npm on PATH (it installs the TF.js packages)", "no npm command")
    steps.append(([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], JS_DIR))
    for cmd, cwd in steps:
        log("+ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)))
        if subprocess.run(cmd, cwd=cwd).returncode != 0:
            raise OnnxfoldError(cmd[0], "the install step to succeed", "it failed (see above)")
