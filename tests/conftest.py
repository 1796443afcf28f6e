"""Shared fixtures: the demo kit is built once per test run, offline, into a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The machine running the tests may be busy (2 cores, CI): no per-example deadlines.
settings.register_profile("workbench", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("workbench")

# No test may reach the network: huggingface_hub refuses instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def demo_kit(tmp_path_factory: pytest.TempPathFactory):
    """Both demo models, their 4-bit twins and the adapters (see engine/demo.py)."""
    from models.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("kit") / "demo")


@pytest.fixture(autouse=True)
def _private_user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Config, data and cache folders of each test live in its own temp folder."""
    monkeypatch.setenv("WORKBENCH_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def engine():
    """A fresh engine, closed after the test."""
    from engine import Engine

    eng = Engine()
    yield eng
    eng.close()


@pytest.fixture
def llama_engine(engine, demo_kit):
    """An engine with the llama demo model loaded."""
    from engine import ModelLoaded

    final = engine.load(str(demo_kit.llama)).wait(120)
    assert isinstance(final, ModelLoaded), final
    return engine
