"""Recipes ship inside the package: listed and copied like `tune ls` / `tune cp`, run by name, checked against
the method they name; a wheel installed without `-e` runs one; a method installed from a package of its own
runs through `vlalign run` and leaves the demo working."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vlalign.cli import app
from vlalign.recipes import LAUNCH, get, locate, recipes

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).resolve().parent / "plugin_method"
TINY_RUN = ["prompts.per_round=6", "rounds=1", "samples=4", "decoding.max_new_tokens=40", "eval=[]", "eval_base=false",
            "report=false", "train.batch_size=2", "train.optim.steps=1", "batch_size=8"]


def test_recipes_lists_every_recipe_with_its_method_and_purpose():
    result = CliRunner().invoke(app, ["recipes"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for r in recipes():
        assert r.name in result.output and r.about[:40] in result.output
    assert {r.method for r in recipes()} >= {"rlaif-v", "silkie", "povid", "mdpo", "mpo", LAUNCH}


def test_copy_writes_the_recipe_to_edit_and_keeps_an_existing_file(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["recipes", "copy", "rlaif_v_world", str(tmp_path)])
    assert result.exit_code == 0, result.output
    copied = tmp_path / "rlaif_v_world.yaml"
    assert copied.read_text() == get("rlaif_v_world").path.read_text()
    copied.write_text("method: rlaif-v\nrounds: 7\n")
    again = runner.invoke(app, ["recipes", "copy", "rlaif_v_world", str(tmp_path)])
    assert again.exit_code != 0 and "--force" in str(again.exception)
    assert copied.read_text() == "method: rlaif-v\nrounds: 7\n"
    shown = runner.invoke(app, ["config", "show", "rlaif-v", "--config", str(copied)])
    assert shown.exit_code == 0 and yaml.safe_load(shown.stdout)["rounds"] == 7


def test_config_takes_a_recipe_name_or_a_path_and_checks_the_method(tmp_path):
    runner = CliRunner()
    by_name = runner.invoke(app, ["config", "show", "rlaif-v", "--config", "rlaif_v_world"])
    by_path = runner.invoke(app, ["config", "show", "rlaif-v", "--config", str(get("rlaif_v_world").path)])
    assert by_name.exit_code == 0 and by_name.stdout == by_path.stdout
    assert yaml.safe_load(by_name.stdout)["labeler"] == "world:labeler"
    wrong = runner.invoke(app, ["run", "silkie", "--config", "rlaif_v_world", "--out", str(tmp_path / "run")])
    assert "is a recipe for rlaif-v, not silkie" in str(wrong.exception)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="no recipe named 'rlaif_v_wrld'.*rlaif_v_world"):
        locate("rlaif_v_wrld")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        locate(str(tmp_path / "missing.yaml"))


@pytest.mark.slow
def test_a_wheel_installed_without_editable_mode_runs_a_shipped_recipe(tmp_path):
    """The wheel holds the recipes (and the world's models); from another folder, a fresh venv that has the
    wheel, not the source tree, runs `vlalign run` from a packaged recipe."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True)
    [wheel] = dist.glob("vlalign-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for r in recipes():
        assert any(n.endswith(f"/{r.path.parent.name}/{r.path.name}") for n in names), r.name
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import vlalign; print(vlalign.__file__)"], cwd=work, check=True,
                           capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(venv)), where
    result = subprocess.run([str(venv / "bin" / "vlalign"), "run", "rlaif-v", "--config", "rlaif_v_world", "--out",
                             "run", *TINY_RUN], cwd=work, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["rounds"][0]["pairs"] >= 1 and summary["config"]["labeler"] == "world:labeler"


@pytest.mark.slow
def test_a_method_from_a_package_of_its_own_runs_and_the_demo_still_starts(tmp_path):
    site, source = tmp_path / "site", tmp_path / "longest-method"
    shutil.copytree(PLUGIN, source)  # a build writes beside its source: keep it out of the checkout
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "vlalign", "run", "longest", "--out", str(tmp_path / "run"),
                             "policy=world:base", "runtime.dtype=fp32", "prompts.source=world", *TINY_RUN],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "longest" and summary["rounds"][0]["pairs"] >= 1
    recipe = tmp_path / "longest_world.yaml"  # the walkthrough's recipe parses under the installed method
    recipe.write_text((ROOT / "docs" / "adding-a-method.md").read_text().split("```yaml\n")[1].split("```")[0])
    shown = subprocess.run([sys.executable, "-m", "vlalign", "config", "show", "longest", "--config", str(recipe)],
                           capture_output=True, text=True, timeout=120, env=env)
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout)["samples"] == 4, shown.stderr
    probe = ("from vlalign.world.demo import not_in_demo, recipes\n"
             "print(not_in_demo(), [r.label for r in recipes()][:1])")
    listed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "['longest'] ['rlaif_v']"


def test_the_walkthrough_shows_the_tested_plugin_as_it_is():
    """docs/adding-a-method.md quotes the plugin the test above installs and runs, file by file."""
    page = (ROOT / "docs" / "adding-a-method.md").read_text()
    for path in (PLUGIN / "pyproject.toml", PLUGIN / "longest_method" / "__init__.py"):
        assert path.read_text().strip() in page, f"{path.name} is not quoted whole in docs/adding-a-method.md"
