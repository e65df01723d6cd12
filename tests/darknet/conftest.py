"""The reference weights: regenerated with ../shared/darknet/make_weights.py, sha256 checked."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.darknet.helpers import manifest, need_shared


@pytest.fixture(scope="session")
def reference_weights(tmp_path_factory):
    """model name -> the .weights its darknet references were made with (made once a session)."""
    made: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in made:
            darknet = need_shared()
            m = manifest(model)
            w = m["weights"]
            seed = re.search(r"--seed (\d+)", w["generator"]).group(1)
            out = tmp_path_factory.mktemp("weights") / w["basename"]
            subprocess.run(
                [sys.executable, "make_weights.py", m["cfg_run"], str(out), "--seed", seed,
                 "--input", str(Path("ref") / m["input"]["file"])],
                cwd=darknet, check=True, capture_output=True,
            )
            digest = hashlib.sha256(out.read_bytes()).hexdigest()
            assert (out.stat().st_size, digest) == (w["bytes"], w["sha256"]), (
                f"regenerated {out.name} differs from the one darknet was run with"
            )
            made[model] = out
        return made[model]

    return get
