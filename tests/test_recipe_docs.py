"""What a user reads about recipes agrees with the code: the schema's words (no Python
internals; `range` inclusive as the code draws it), `validate --print` written as a recipe is,
and the stale-golden hint naming the recipe file by a path that works."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

import trtopt
from gate_helpers import perturb
from helpers import MODELS, run_cli
from trtopt import feeds
from trtopt.golden import GoldenError
from trtopt.recipe import Recipe, load_recipe


def descriptions(schema: object) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["description"]] if isinstance(schema.get("description"), str) else []
        return found + [d for value in schema.values() for d in descriptions(value)]
    if isinstance(schema, list):
        return [d for value in schema for d in descriptions(value)]
    return []


def test_the_schema_speaks_of_recipes_not_python_internals():
    texts = descriptions(Recipe.model_json_schema())
    for internal in ("DEFAULT_DIM", "GOLDEN_SIZE_BUDGET", "trtopt.calibration", "trtopt.golden"):
        assert not [t for t in texts if internal in t], internal


def test_range_is_inclusive_in_the_schema_the_readme_and_the_code():
    schema = Recipe.model_json_schema()
    text = schema["$defs"]["InputSpec"]["properties"]["range"]["description"]
    assert "[low, high)" not in text and "Inclusive" in text
    readme = (MODELS.parent.parent / "README.md").read_text()
    assert "inclusive range of synthetic values" in readme
    info = feeds.InputInfo("ids", np.dtype(np.int64), (4096,))
    drawn = feeds.synthetic_feeds([info], 1, 0, {}, {"ids": (0, 3)})[0]["ids"]
    assert sorted(set(drawn.tolist())) == [0, 1, 2, 3]  # both ends


def test_validate_print_writes_short_lists_on_one_line(write_recipe, recipe_for, tmp_path):
    recipe = recipe_for(MODELS / "cnn_legacy.onnx")
    recipe["inputs"]["pixel_values"]["shape"] = ["batch", 3, 32, 32]
    recipe["inputs"]["pixel_values"]["profile"] = {
        "min": [1, 3, 32, 32],
        "opt": [2, 3, 32, 32],
        "max": [4, 3, 32, 32],
    }
    path = write_recipe(recipe)
    done = run_cli("validate", str(path), "--print")
    assert done.returncode == 0, done.stderr
    assert "shape: [batch, 3, 32, 32]" in done.stdout
    assert "min: [1, 3, 32, 32]" in done.stdout and "range: [0.0, 1.0]" in done.stdout
    assert "passes:\n- cleanup\n" in done.stdout  # a list of passes stays a block
    again = write_recipe(done.stdout, "printed.yaml")
    assert load_recipe(again).model_dump() == load_recipe(path).model_dump()
    assert yaml.safe_load(done.stdout)["inputs"] == json.loads(
        json.dumps(load_recipe(path).model_dump(mode="json")["inputs"])
    )


def test_the_stale_golden_hint_names_the_recipe_file(tmp_path, recipe_for, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    model = shutil.copyfile(MODELS / "cnn_legacy.onnx", folder / "model.onnx")
    recipe = recipe_for(model, name="my-model")
    recipe["check"]["golden"] = "golden.npz"
    path = folder / "my-recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    trtopt.update_golden(path)
    perturb(model, model)  # the model changed since the golden file was written
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GoldenError) as error:
        trtopt.compile("recipes/my-recipe.yaml", tmp_path / "o")
    assert "run `trtopt golden update recipes/my-recipe.yaml`" in str(error.value)
    with pytest.raises(GoldenError) as error:
        trtopt.check("recipes/my-recipe.yaml", artifact=model)
    assert "run `trtopt golden update recipes/my-recipe.yaml`" in str(error.value)


def test_option_docs_are_the_docstrings_under_their_declarations():
    """Read from the source on demand (trtopt.docstrings) as pydantic's use_attribute_docstrings
    read them when each class was made: a redeclared field keeps only its own docstring, a
    Field(description=...) wins, and a class made inside a function is found too."""
    from pydantic import Field

    from trtopt.passes import PassOptions

    class Base(PassOptions):
        size: int = 1
        """How many."""
        mode: str = "a"
        """Which one."""

    class Child(Base):
        mode: str = "b"
        named: int = Field(0, description="Given.")
        """Ignored."""

    properties = Child.model_json_schema()["properties"]
    assert properties["size"]["description"] == "How many."
    assert "description" not in properties["mode"]
    assert properties["named"]["description"] == "Given."
    assert Base.model_json_schema()["properties"]["mode"]["description"] == "Which one."
