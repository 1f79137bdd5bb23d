"""Shared fixtures: a tiny random-weight world VLM saved like any Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from threads, and threads fighting another process slow them badly.
torch.set_num_threads(1)

TINY = dict(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=1, text_heads=2,
            text_intermediate=64)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n auto --dist loadgroup`) every test that reads the quick demo runs in the one
    worker that makes it: a session fixture is made once per worker, and the demo takes minutes."""
    for item in items:
        if "quick_demo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("quick_demo"))


@pytest.fixture(scope="session")
def tiny_world_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model + processor of a world LLaVA with random weights (a few hundred thousand parameters)."""
    from vlalign.models.load import save
    from vlalign.world.model import TinyVLMConfig, build_model, build_processor

    config = TinyVLMConfig(**TINY)
    processor = build_processor(config)
    model = build_model(processor, config, seed=0)
    return save(model, processor, tmp_path_factory.mktemp("tiny-world-model"))


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`vlalign demo --quick` run once for every slow test that reads it (the demo's, the report's)."""
    import json

    from typer.testing import CliRunner

    from vlalign.cli import app

    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "summary.json").read_text())
