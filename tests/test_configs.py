"""Configs: the shipped recipes load, the demo runs exactly them, `config show` documents every key,
overrides change what they name and nothing else, and every mistake is reported at once, before torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlalign.config import ConfigError, describe, load_config, undocumented
from vlalign.plugins import METHODS
from vlalign.recipes import LAUNCH, get
from vlalign.recipes import recipes as shipped
from vlalign.world.demo import recipes

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"rlaif_v_world": "rlaif-v", "rlaif_v_self_world": "rlaif-v", "silkie_world": "silkie",
           "povid_world": "povid", "mdpo_world": "mdpo", "mpo_world": "mpo", "rlaif_v_llava": "rlaif-v",
           "silkie_api": "silkie", "povid_rlaif_v_world": "rlaif-v"}


@pytest.mark.parametrize(("name", "method"), SHIPPED.items())
def test_shipped_recipes_load_and_are_complete(name, method):
    recipe = get(name)
    assert recipe.method == method and recipe.about
    config = load_config(METHODS.get(method).config, recipe.path)
    assert config.problems() == []


def test_every_recipe_is_listed_and_the_demo_runs_the_world_ones():
    assert {r.name: r.method for r in shipped() if r.method != LAUNCH} == SHIPPED
    demo = {(r.recipe, r.method) for r in recipes()}
    assert demo == {(n, m) for n, m in SHIPPED.items() if n.endswith("_world")}
    assert {m for _, m in demo} == set(METHODS.names())  # the demo covers every method the core ships


@pytest.mark.parametrize("method", ["rlaif-v", "silkie", "povid", "mdpo", "mpo"])
def test_config_show_documents_every_key_and_round_trips(method):
    cls = METHODS.get(method).config
    assert undocumented(cls) == []
    text = describe(cls())
    data = yaml.safe_load(text)
    assert load_config(cls, None, _flat(data)) == cls()  # what it prints is the config
    for line in text.splitlines():
        assert "#" in line, line  # every key has its comment


def _flat(data: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        if isinstance(v, dict) and v and k not in ("loss", "options", "mix"):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


def test_overrides_change_only_what_they_name():
    cls = METHODS.get("mdpo").config
    config = load_config(cls, None, ["train.batch_size=4", "train.optim.lr=1e-3"])
    assert config.train.loss == cls().train.loss  # the method's own objective stays
    assert (config.train.batch_size, config.train.optim.lr) == (4, 1e-3)
    assert config.train.optim.warmup_ratio == cls().train.optim.warmup_ratio
    replaced = load_config(METHODS.get("rlaif-v").config, get("rlaif_v_world").path,
                           ["train.loss={sft: 1.0}", "prompts.per_round=5"])
    assert replaced.train.loss == {"sft": 1.0} and replaced.train.beta == 0.3  # a mapping value is replaced whole
    assert replaced.prompts.per_round == 5 and replaced.prompts.options["mix"]["count"] == 0.25


def test_every_mistake_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: world:base\npromts: world\nrounds: two\ntrain: {loss: {sigmod: 1.0}, optim: {lr: fast}}\n"
                   "eval: [worldx]\nprompts: {source: world, options: {mix: {dance: 1}}}\nruntime: {dtype: fp8}\n")
    with pytest.raises(ConfigError) as e:
        load_config(METHODS.get("rlaif-v").config, bad, ["decoding.temperature=-1"])
    text = str(e.value)
    for expected in ("promts: unknown setting", "rounds: expected an integer", "train.optim.lr: expected a number",
                     "unknown loss term(s) ['sigmod']", "unknown benchmark 'worldx'", "dance", "dtype",
                     "(override) decoding: temperature"):
        assert expected in text, expected
    assert len(e.value.problems) == 8


def test_a_config_error_comes_before_any_model_library(tmp_path):
    """`vlalign run` with a typo answers without importing torch or transformers."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: world:base\nrouns: 2\n")
    code = ("import sys\nfrom vlalign.cli import main\nsys.argv = ['vlalign', 'run', 'rlaif-v', '--config', "
            f"{str(bad)!r}, '--out', {str(tmp_path / 'run')!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 2\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "rouns: unknown setting" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_config_reference_page_is_what_config_show_prints():
    from typer.testing import CliRunner

    from vlalign.cli import app

    result = CliRunner().invoke(app, ["config", "show", "--markdown"])
    assert result.exit_code == 0, result.output
    assert (ROOT / "docs" / "configs.md").read_text() == result.stdout, "regenerate: vlalign config show --markdown"
