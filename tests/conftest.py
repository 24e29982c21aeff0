"""Shared test helpers: compose the Hydra config once per call and shrink it (backbone=tiny, runner=debug).

    cfg = compose("method=lora", "task=rte")
"""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.abspath(os.path.join(ROOT, "..", "shared", "data"))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from core import config  # noqa: E402

config.load_registries()

DEBUG = ("backbone=tiny", "runner=debug", "logger=none")


def compose(*overrides: str, debug: bool = True):
    """The resolved run config for these overrides (tiny backbone and debug runner unless debug=False)."""
    return config.compose([*(DEBUG if debug else ()), *overrides])


def shared_data(*parts: str) -> str:
    """Path under ../shared/data, or skip the test with a clear reason when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not present: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """A private results folder for runs made by a test."""
    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one intra-op thread is far faster than contended multi-threading on shared CPUs.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`; the count is restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
