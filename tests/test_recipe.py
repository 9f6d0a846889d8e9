"""Recipe loading: schema, places in errors, suggestions, `extends`, `--set`, JSON Schema."""

from __future__ import annotations

from pathlib import Path

import pytest

import trtopt
from trtopt import RecipeError
from trtopt.recipe import DEFAULT_THRESHOLDS, json_schema

BASE = """\
name: base
model: models/m.onnx
passes:
  - cleanup
  - fold-constants: {size_threshold: 1MiB}
check:
  samples: 3
  thresholds: {max_abs: 0.01}
"""


def test_loads_and_normalizes(write_recipe):
    recipe = trtopt.load_recipe(write_recipe(BASE))
    assert recipe.name == "base"
    assert [p.name for p in recipe.passes] == ["cleanup", "fold-constants"]
    assert recipe.passes[1].options == {"size_threshold": "1MiB"}
    assert recipe.check.samples == 3
    assert recipe.build.backend == "onnxruntime"


def test_paths_are_relative_to_the_recipe_file(write_recipe, tmp_path):
    recipe = trtopt.load_recipe(write_recipe(BASE))
    assert Path(recipe.model) == tmp_path / "models" / "m.onnx"
    assert recipe.output_dir() == Path("build") / "base" or recipe.output is None


def test_unknown_key_names_line_column_and_suggests(write_recipe):
    path = write_recipe(BASE + "  sampels: 4\n")
    with pytest.raises(RecipeError) as info:
        trtopt.load_recipe(path)
    assert str(info.value).startswith(f"{path}:9:3: unknown key 'sampels'")
    assert "did you mean 'samples'?" in str(info.value)
    assert info.value.exit_code == 2


def test_unknown_top_level_key_suggests(write_recipe):
    path = write_recipe(BASE + "outptu: x\n")
    with pytest.raises(RecipeError, match=r":9:1: unknown key 'outptu'; did you mean 'output'"):
        trtopt.load_recipe(path)


def test_wrong_type_names_the_value(write_recipe):
    path = write_recipe(BASE.replace("samples: 3", "samples: many"))
    with pytest.raises(RecipeError, match=r":7:3: check.samples: Input should be a valid integer"):
        trtopt.load_recipe(path)


def test_missing_required_key(write_recipe):
    path = write_recipe("name: x\n")
    with pytest.raises(RecipeError, match="missing required key 'model'"):
        trtopt.load_recipe(path)


def test_unknown_pass_suggests_closest(write_recipe):
    path = write_recipe(BASE.replace("- cleanup", "- claenup"))
    with pytest.raises(RecipeError) as info:
        trtopt.load_recipe(path)
    assert str(info.value) == f"{path}:4:5: unknown pass 'claenup'; did you mean 'cleanup'?"


def test_unknown_pass_option_names_its_line(write_recipe):
    path = write_recipe(BASE.replace("size_threshold: 1MiB", "size_treshold: 1MiB"))
    with pytest.raises(RecipeError) as info:
        trtopt.load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}:5:22: unknown key 'size_treshold' in pass 'fold-constants'")
    assert "did you mean 'size_threshold'?" in message


def test_bad_pass_option_value(write_recipe):
    path = write_recipe(BASE.replace("size_threshold: 1MiB", "size_threshold: huge"))
    with pytest.raises(RecipeError, match=r":5:22: size_threshold: could not parse value"):
        trtopt.load_recipe(path)


def test_yaml_syntax_error_has_place(write_recipe):
    path = write_recipe("name: x\nmodel: [unclosed\n")
    with pytest.raises(RecipeError, match=rf"^{path}:\d+:\d+: invalid YAML"):
        trtopt.load_recipe(path)


def test_duplicate_key_is_an_error(write_recipe):
    path = write_recipe(BASE + "name: again\n")
    with pytest.raises(RecipeError, match=r":9:1: duplicate key 'name'"):
        trtopt.load_recipe(path)


def test_unsafe_yaml_tag_is_refused(write_recipe):
    path = write_recipe(BASE + "output: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        trtopt.load_recipe(path)


def test_extends_deep_merges_and_replaces_lists(write_recipe, tmp_path):
    write_recipe(BASE, "base.yaml")
    child = write_recipe(
        "extends: base.yaml\nname: child\npasses: [infer-shapes]\ncheck: {seed: 7}\n", "c.yaml"
    )
    recipe = trtopt.load_recipe(child)
    assert recipe.name == "child"
    assert [p.name for p in recipe.passes] == ["infer-shapes"]
    assert recipe.check.seed == 7 and recipe.check.samples == 3  # merged, not replaced
    assert recipe.check.thresholds.max_abs == 0.01
    assert Path(recipe.model) == tmp_path / "models" / "m.onnx"


def test_extends_error_points_into_the_base_file(write_recipe):
    base = write_recipe(BASE + "  sampels: 1\n", "base.yaml")
    child = write_recipe("extends: base.yaml\nname: child\n", "c.yaml")
    with pytest.raises(RecipeError, match=rf"^{base}:9:3: unknown key 'sampels'"):
        trtopt.load_recipe(child)


def test_extends_cycle_and_missing(write_recipe):
    write_recipe("extends: b.yaml\nname: a\nmodel: m\n", "a.yaml")
    b = write_recipe("extends: a.yaml\nname: b\nmodel: m\n", "b.yaml")
    with pytest.raises(RecipeError, match="`extends` cycle"):
        trtopt.load_recipe(b)
    c = write_recipe("extends: nope.yaml\nname: c\nmodel: m\n", "c.yaml")
    with pytest.raises(RecipeError, match=r"c.yaml:1:1: extended recipe not found"):
        trtopt.load_recipe(c)


def test_set_overrides_values_and_creates_sections(write_recipe):
    recipe = trtopt.load_recipe(
        write_recipe(BASE),
        overrides=["check.samples=8", "check.outputs.logits.class_scores=true", "name=other"],
    )
    assert recipe.check.samples == 8
    assert recipe.check.outputs["logits"].class_scores is True
    assert recipe.name == "other"


def test_set_error_names_the_flag(write_recipe):
    with pytest.raises(RecipeError) as info:
        trtopt.load_recipe(write_recipe(BASE), overrides=["check.sample=8"])
    assert str(info.value).startswith("--set check.sample=8: unknown key 'sample'")
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        trtopt.load_recipe(write_recipe(BASE), overrides=["check.samples"])


@pytest.mark.parametrize("key", ["check..samples", ".check.samples", "check.samples."])
def test_set_with_an_empty_key_is_blamed_on_the_flag(write_recipe, key):
    """Was blamed on the recipe's `check:` line ("recipe.yaml:16:1: unknown key ''")."""
    with pytest.raises(RecipeError) as info:
        trtopt.load_recipe(write_recipe(BASE), overrides=[f"{key}=1"])
    assert str(info.value) == (
        f"--set {key}=1: '{key}' has an empty key (a doubled, leading or trailing dot)"
    )


def test_threshold_resolution_per_output(write_recipe):
    text = BASE + "  outputs:\n    logits: {class_scores: true, thresholds: {min_top1: 0.9}}\n"
    recipe = trtopt.load_recipe(write_recipe(text))
    logits = recipe.check.thresholds_for("logits")
    assert (logits.max_abs, logits.min_top1) == (0.01, 0.9)
    assert logits.min_cosine == DEFAULT_THRESHOLDS.min_cosine
    assert recipe.check.thresholds_for("other").min_top1 is None


def test_round_trip_through_print(write_recipe, tmp_path):
    recipe = trtopt.load_recipe(write_recipe(BASE))
    again = trtopt.load_recipe(write_recipe(recipe.to_yaml(), "again.yaml"))
    assert again.model_dump() == recipe.model_dump()


def test_json_schema_lists_passes_and_forbids_unknown_keys():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert "extends" in schema["properties"]
    variants = schema["properties"]["passes"]["items"]["anyOf"]
    assert {"cleanup", "fold-constants", "infer-shapes"} <= set(variants[0]["enum"])
    objects = [next(iter(v["properties"])) for v in variants[1:]]
    assert "fold-constants" in objects
