"""Hostile inputs: poisoned shared caches, alias bombs, recipes that run code when only
validated, plugins that clash or exit, and values that would pass unchecked. Each case ends
in a miss, or exit 2 naming the place: never a stray write, a crash, or a faked success."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

import trtopt
from helpers import QUICKSTART_MODEL, ROOT, hostile_recipe
from trtopt.cache import MANIFEST, StageCache, plain_name
from trtopt.cli import main

pytestmark = pytest.mark.usefixtures("keep_sigterm")


def _recipe(tmp_path: Path, **changes: object) -> Path:
    return hostile_recipe(tmp_path, **{"passes": ["cleanup", "fold-constants"], **changes})


def _entries(root: Path) -> list[Path]:
    return sorted((root / "stages-v1" / "entries").glob("*/*"))


# -- a shared cache cannot write outside the output, nor crash trtopt ------------------------


def test_a_cache_entry_naming_a_path_is_a_miss_and_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    recipe = _recipe(tmp_path)
    assert trtopt.compile(recipe, cache_dir=cache).exit_code == 0
    name = f"PWNED-{uuid.uuid4().hex}"
    payload = b"owned"
    hostile = f"../../{name}"
    for entry in _entries(cache):
        # The file the hostile name points at exists and matches its size and hash.
        (entry / "files" / hostile).write_bytes(payload)
        manifest = json.loads((entry / MANIFEST).read_text())
        manifest["files"][hostile] = [len(payload), hashlib.sha256(payload).hexdigest()]
        if "artifacts" in manifest["meta"]:
            manifest["meta"]["artifacts"].append(hostile)
        (entry / MANIFEST).write_text(json.dumps(manifest))
    result = trtopt.compile(recipe, cache_dir=cache)
    assert result.exit_code == 0
    assert result.report["cache"]["compile"] == "miss"
    assert not any(p["cached"] for p in result.report["passes"])
    for folder in (tmp_path, tmp_path.parent, ROOT, ROOT / "recipes"):
        assert not (folder / name).exists()


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "/etc/x", "..\\x", "C:x", "", ".", "..", "a\0b", 3, None]
)
def test_only_plain_file_names_are_restored(name):
    assert not plain_name(name)
    assert plain_name("model.onnx") and plain_name(".trtopt-output")


@pytest.mark.parametrize(
    "damage",
    [
        "null",
        '{"files": [1, 2]}',
        "missing meta",
        "not json {",
        '{"files": {"model.onnx": "x"}}',
        "[]",
    ],
)
def test_damaged_manifests_are_misses_and_prune_removes_them(tmp_path, capsys, damage):
    cache = tmp_path / "cache"
    recipe = _recipe(tmp_path)
    assert trtopt.compile(recipe, cache_dir=cache).exit_code == 0
    entries = _entries(cache)
    for entry in entries:
        manifest = json.loads((entry / MANIFEST).read_text())
        if damage == "missing meta":
            del manifest["meta"]
            text = json.dumps(manifest)
        elif damage.startswith("{"):
            text = json.dumps({**manifest, **json.loads(damage)})
        else:
            text = damage
        (entry / MANIFEST).write_text(text)
    capsys.readouterr()
    assert main(["cache", "info", "--json", "--cache-dir", str(cache)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["by_kind"].get("damaged") == len(entries)
    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 0
    assert f"{len(entries)} damaged" in capsys.readouterr().out
    assert StageCache(cache).info().entries == 0
    for entry in entries:  # damaged again, now read by a compile: a miss, not a crash
        entry.mkdir(parents=True)
        (entry / MANIFEST).write_text(text)
    result = trtopt.compile(recipe, cache_dir=cache)
    assert result.exit_code == 0 and result.report["cache"]["compile"] == "miss"
    assert StageCache(cache).info().by_kind.get("damaged") is None


def test_a_damaged_entry_is_replaced_by_the_next_compile(tmp_path):
    cache = tmp_path / "cache"
    recipe = _recipe(tmp_path)
    trtopt.compile(recipe, cache_dir=cache)
    for entry in _entries(cache):
        (entry / MANIFEST).write_text("null")
    trtopt.compile(recipe, cache_dir=cache)
    assert StageCache(cache).info().by_kind.get("damaged") is None
    assert trtopt.compile(recipe, cache_dir=cache).report["cache"]["compile"] == "hit"


# -- the calibration range cache follows the stage cache's settings --------------------------


def _quantized(tmp_path: Path) -> Path:
    check = {
        "samples": 1,
        "dims": {"batch": 1},
        "latency_runs": 0,
        "thresholds": {"max_abs": 100.0, "min_cosine": 0.5},  # INT8: only the exit code counts
    }
    passes = ["cleanup", {"quantize": {"calibrator": "minmax"}}]
    return _recipe(tmp_path, passes=passes, check=check)


def test_no_cache_writes_no_ranges_even_with_an_unwritable_home(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.write_text("a file: nothing can be created under it, whoever runs the test")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("TRTOPT_CACHE_DIR", raising=False)
    assert main(["compile", str(_quantized(tmp_path)), "--no-cache"]) == 0, capsys.readouterr()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    quantize = report["passes"][1]["details"]["calibration"]
    assert quantize["cache_file"] is None and not quantize["cached"]


def test_ranges_live_in_the_cache_dir_and_cache_commands_cover_them(tmp_path, capsys):
    cache = tmp_path / "cache"
    recipe = _quantized(tmp_path)
    assert main(["compile", str(recipe), "--cache-dir", str(cache)]) == 0
    (ranges,) = (cache / "ranges-v1").glob("*.json")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passes"][1]["details"]["calibration"]["cache_file"] == str(ranges)
    capsys.readouterr()
    assert main(["cache", "info", "--json", "--cache-dir", str(cache)]) == 0
    assert json.loads(capsys.readouterr().out)["by_kind"]["ranges"] == 1
    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", str(cache)]) == 0
    assert not ranges.exists()
    # A recipe's cache.enabled: false turns the range cache off too.
    recipe.write_text(json.dumps({**json.loads(recipe.read_text()), "cache": {"enabled": False}}))
    assert main(["compile", str(recipe), "--cache-dir", str(cache)]) == 0
    assert not list((cache / "ranges-v1").glob("*.json"))


# -- recipes that would exhaust memory or the stack, or break the YAML layer -----------------

BOMB = "\n".join(
    [
        'a: &a ["x","x","x","x","x","x","x","x","x"]',
        *(
            f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]"
            for prev, name in zip("abcdefgh", "bcdefghi")
        ),
        "name: bomb",
        "model: m.onnx",
    ]
)


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        (BOMB, "expands to more than", None),
        ("name: x\nmodel: m.onnx\nloop: &a [*a]\n", "contains it", 3),
        ("name: x\nmodel: m.onnx\n? {a: 1}\n: 2\n", "not a mapping", 3),
        ("name: x\nmodel: m.onnx\n? [a, b]\n: 2\n", "not a list", 3),
        ("name: x\nmodel: m.o\0nnx\n", "NUL", 2),
        ("name: x\nmodel: m.onnx\nbell: \x07\n", "invalid YAML", 3),
        ("name: x\nmodel: m.onnx\n" + "a: " + "[" * 200 + "]" * 200 + "\n", "deeper", 3),
    ],
    ids=["alias-bomb", "self-alias", "mapping-key", "list-key", "nul", "control", "deep"],
)
def test_hostile_yaml_is_refused_with_its_place(tmp_path, capsys, text, message, line):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    assert len(BOMB) < 512
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and f"{path}:" in err, err
    if line is not None:
        assert f"{path}:{line}:" in err, err


# -- plugins: validate runs none of them; names clash loudly; imports cannot fake success ----

PLUGIN = '''
from pathlib import Path

from trtopt import Pass, register_pass

Path(__file__).with_suffix(".ran").write_text("imported")


@register_pass("{name}")
class Plugin(Pass):
    """A plugin pass that changes nothing."""

    def run(self, graph, ctx):
        return graph
'''


def _plugin(folder: Path, stem: str, name: str, extra: str = "") -> Path:
    path = folder / f"{stem}.py"
    path.write_text(PLUGIN.replace("{name}", name) + extra)
    return path


def test_validate_parses_plugins_without_running_them(tmp_path, capsys):
    plugin = _plugin(tmp_path, "writes", f"only-in-plugin-{uuid.uuid4().hex[:8]}")
    name = plugin.read_text().split('register_pass("')[1].split('"')[0]
    recipe = _recipe(tmp_path, plugins=["writes.py"], passes=["cleanup", {name: {"x": 1}}])
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    assert not plugin.with_suffix(".ran").exists()
    broken = tmp_path / "broken.py"
    broken.write_text("def (:\n")
    recipe = _recipe(tmp_path, plugins=["broken.py"])
    assert main(["validate", str(recipe)]) == 2
    assert "broken.py" in capsys.readouterr().err
    recipe = _recipe(tmp_path, plugins=["writes.py"], passes=["cleanup", "not-a-pass"])
    assert main(["validate", str(recipe)]) == 2
    assert "unknown pass 'not-a-pass'" in capsys.readouterr().err
    assert not plugin.with_suffix(".ran").exists()


@pytest.mark.parametrize("validate", [True, False], ids=["validate", "compile"])
def test_two_plugins_registering_one_name_exit_2_naming_both(tmp_path, capsys, validate):
    name = f"twice-{uuid.uuid4().hex[:8]}"
    first, second = _plugin(tmp_path, "first", name), _plugin(tmp_path, "second", name)
    recipe = _recipe(tmp_path, plugins=["first.py", "second.py"], passes=[name])
    argv = ["validate", str(recipe)] if validate else ["compile", str(recipe), "--no-cache"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(first) in err and str(second) in err and "twice" in err, err


@pytest.mark.parametrize("validate", [True, False], ids=["validate", "compile"])
def test_a_plugin_cannot_take_a_built_in_name(tmp_path, capsys, validate):
    plugin = _plugin(tmp_path, f"cleanup_{uuid.uuid4().hex[:8]}", "cleanup")
    # The built-in's own class name: a same-named class once replaced it silently.
    plugin.write_text(plugin.read_text().replace("class Plugin(", "class Cleanup("))
    recipe = _recipe(tmp_path, plugins=[plugin.name])
    argv = ["validate", str(recipe)] if validate else ["compile", str(recipe), "--no-cache"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(plugin) in err and "cleanup" in err, err
    assert trtopt.available_passes()["cleanup"].__module__.startswith("trtopt.passes")


@pytest.mark.parametrize(
    "ending",
    ["import sys\nsys.exit(0)\n", "raise SystemExit\n", "raise GeneratorExit\n"],
    ids=["sys.exit(0)", "SystemExit", "GeneratorExit"],
)
def test_a_plugin_exiting_at_import_is_reported(tmp_path, capsys, ending):
    plugin = _plugin(tmp_path, f"exits_{uuid.uuid4().hex[:8]}", f"e-{uuid.uuid4().hex[:8]}", ending)
    recipe = _recipe(tmp_path, plugins=[plugin.name])
    assert main(["compile", str(recipe), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert str(plugin) in err and "failed to load" in err, err
    assert not (tmp_path / "out").exists()


# -- values that would pass unchecked ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"inputs": {"pixel_values": {"range": [1.0, 0.0]}}}, "range", "reversed"),
        ({"inputs": {"pixel_values": {"range": [0.0, ".inf"]}}}, "range", "finite"),
        ({"check": {"seed": -1}}, "seed", "greater than or equal to 0"),
        ({"check": {"seed": 2**32}}, "seed", "less than 4294967296"),
        ({"check": {"data": {"synthetic": {"seed": 2**32}}}}, "seed", "less than"),
        ({"build": {"onnxruntime": {"intra_op_threads": 100000}}}, "intra_op_threads", "1024"),
    ],
    ids=["reversed-range", "infinite-range", "negative-seed", "huge-seed", "data-seed", "threads"],
)
def test_out_of_range_values_exit_2_with_their_place(tmp_path, capsys, change, key, message):
    lines = ["name: x", f"model: {QUICKSTART_MODEL}"]
    for section, value in change.items():
        lines.append(f"{section}: {json.dumps(value)}".replace('".inf"', ".inf"))
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and key in err and message in err, err


# -- data scripts cannot fake success ---------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        "import sys\nsys.exit(0)\n",
        "def load_data():\n    raise SystemExit(0)\n",
        "def load_data():\n    yield from ()\n    raise SystemExit(0)\n",
        "def load_data():\n    raise GeneratorExit\n",
    ],
    ids=["exit-at-import", "exit-in-call", "exit-while-yielding", "generator-exit"],
)
def test_a_data_script_exiting_is_a_data_error(tmp_path, capsys, script):
    (tmp_path / "data.py").write_text(script)
    recipe = _recipe(
        tmp_path, check={"samples": 1, "latency_runs": 0, "data": {"script": "data.py"}}
    )
    assert main(["compile", str(recipe), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "data.py" in err and ("SystemExit" in err or "GeneratorExit" in err), err
    assert not (tmp_path / "out").exists()


def test_a_data_script_read_partly_is_closed_cleanly(tmp_path):
    (tmp_path / "data.py").write_text(
        "import numpy as np\n"
        "def load_data():\n"
        "    for _ in range(100):\n"
        "        yield {'pixel_values': np.zeros((1, 3, 32, 32), np.float32)}\n"
    )
    recipe = _recipe(
        tmp_path, check={"samples": 2, "latency_runs": 0, "data": {"script": "data.py"}}
    )
    assert trtopt.compile(recipe, use_cache=False).exit_code == 0
