"""The shipped world recipes load, and the ones the demo also runs say what the demo runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlalign.config import load_config
from vlalign.pipelines.demo import FULL
from vlalign.pipelines.povid import POVIDConfig
from vlalign.pipelines.rlaif_v import RLAIFVConfig
from vlalign.pipelines.silkie import SilkieConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize(("name", "cls"), [("rlaif_v_world", RLAIFVConfig), ("rlaif_v_self_world", RLAIFVConfig),
                                           ("silkie_world", SilkieConfig), ("povid_world", POVIDConfig)])
def test_world_configs_load(name, cls):
    assert isinstance(load_config(cls, CONFIGS / f"{name}.yaml"), cls)


def test_self_and_povid_configs_are_the_demo_recipes():
    assert load_config(RLAIFVConfig, CONFIGS / "rlaif_v_self_world.yaml") == FULL.rlaif_v_self
    assert load_config(POVIDConfig, CONFIGS / "povid_world.yaml") == FULL.povid


def test_silkie_config_trains_with_the_demo_recipe():
    """The YAML runs more prompts than the demo, with the same DPO recipe (mDPO anchor included)."""
    yaml_config = load_config(SilkieConfig, CONFIGS / "silkie_world.yaml")
    assert yaml_config.dpo == FULL.silkie.dpo
    assert FULL.silkie.dpo.anchor_weight > 0
