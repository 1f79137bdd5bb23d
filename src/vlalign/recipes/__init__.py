"""Recipes: the YAML configs that ship inside the package, found by name (`vlalign recipes` lists them,
`vlalign recipes copy NAME DIR` writes one out to edit, and `--config NAME` runs one as it is).

A recipe's first comment line says what it is for, and its `method:` key names the method it configures (a
method's config does not hold that key; the command line checks it against the method it runs). Launch
configs for `accelerate launch` ship beside them, under `accelerate/`. Plugins add folders of their own
through the `vlalign.recipes` entry point group (the world's recipes are such a folder).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlalign.plugins import RECIPE_FOLDERS

HERE = Path(__file__).resolve().parent
LAUNCH = "accelerate launch"  # what a launch config is for, in place of a method

RECIPE_FOLDERS.register("vlalign", HERE)
RECIPE_FOLDERS.register("accelerate", HERE / "accelerate")


@dataclass(frozen=True)
class Recipe:
    name: str  # the file's stem, unique over every folder
    path: Path
    method: str  # the method it configures, or "accelerate launch"
    about: str  # its first comment line

    @classmethod
    def read(cls, path: Path, folder: str) -> Recipe:
        text = path.read_text(encoding="utf-8")
        first = next((line for line in text.splitlines() if line.strip()), "")
        about = first.lstrip("#").strip() if first.startswith("#") else ""
        data = yaml.safe_load(text) or {}
        method = LAUNCH if folder == "accelerate" else data.get("method") if isinstance(data, dict) else None
        if not isinstance(method, str):
            raise ValueError(f"recipe {path} names no method: add a top-level `method:` key (e.g. method: rlaif-v)")
        return cls(path.stem, path, method, about)


def recipes() -> list[Recipe]:
    """Every shipped recipe, by name; two of one name are an error that names both files."""
    found: dict[str, Recipe] = {}
    for folder, where in RECIPE_FOLDERS.items():
        for path in sorted(Path(where).glob("*.yaml")):
            recipe = Recipe.read(path, folder)
            if recipe.name in found:
                raise ValueError(f"two recipes are named {recipe.name}: {found[recipe.name].path} and {path}")
            found[recipe.name] = recipe
    return sorted(found.values(), key=lambda r: (r.method == LAUNCH, r.method, r.name))


def get(name: str) -> Recipe:
    for recipe in recipes():
        if recipe.name == name:
            return recipe
    raise ValueError(f"no recipe named {name!r}; `vlalign recipes` lists them: {', '.join(r.name for r in recipes())}")


def locate(config: str | Path) -> Path:
    """A config given as a file path, or as the name of a shipped recipe."""
    path = Path(config)
    if path.is_file():
        return path
    if path.suffix or path.parent != Path("."):
        raise FileNotFoundError(f"config file {path} does not exist (and a recipe is named without a folder or "
                                f".yaml: `vlalign recipes` lists them)")
    return get(str(config)).path


def method_of(path: Path) -> str | None:
    """The method a config file says it is for (its `method:` key), if it says."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    method = data.get("method") if isinstance(data, dict) else None
    return method if isinstance(method, str) else None


def copy(name: str, dest: str | Path, overwrite: bool = False) -> Path:
    """Write recipe `name` to `dest` (a folder, or a file path) to edit; an existing file is kept unless
    `overwrite`."""
    recipe = get(name)
    dest = Path(dest)
    target = dest / recipe.path.name if dest.is_dir() or not dest.suffix else dest
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; choose another place, or pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe.path, target)
    return target
