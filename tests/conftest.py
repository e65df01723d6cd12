"""Under CI (CI=true), a skipped test is a failure: CI installs everything the tests need."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must install everything: {report.longrepr}"


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(REPO, "models", "tiny-yolov2-backbone.onnx")


@pytest.fixture(scope="session")
def bundled_model():
    import onnx

    return onnx.load(BUNDLED)


@pytest.fixture
def bundled(tmp_path):
    """A copy of the bundled default model in tmp_path, as tiny.onnx."""
    import shutil

    p = tmp_path / "tiny.onnx"
    shutil.copyfile(BUNDLED, p)
    return p
