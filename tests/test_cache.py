"""The stage cache: keys (graph, pass options, data where read, code and library versions),
hits and misses, damage, settings precedence, concurrent writers, `trtopt cache info|prune`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import trtopt
from helpers import ROOT, run_cli
from trtopt import cache as stage_cache
from trtopt import cache_keys, unchanged
from trtopt.cache import StageCache
from trtopt.cli import main

QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"

READS_FEEDS = """
from trtopt import Pass, register_pass


@register_pass("count-feeds")
class CountFeeds(Pass):
    \"\"\"Read the check feeds (and change nothing).\"\"\"

    def run(self, graph, ctx):
        ctx.details["feeds"] = len(ctx.feeds)
        return graph
"""


@pytest.fixture(autouse=True)
def _keep_sigterm():
    """main() installs a SIGTERM handler; give the test process its own back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _recipe(tmp_path: Path, **changes) -> dict:
    recipe = {
        "name": "cached",
        "model": str(QUICKSTART_MODEL),
        "inputs": {"pixel_values": {"range": [0.0, 1.0]}},
        "passes": ["cleanup", {"fold-constants": {"size_threshold": "16MiB"}}, "cleanup"],
        "check": {"samples": 2, "dims": {"batch": 2}, "latency_runs": 0},
        "output": str(tmp_path / "out"),
    }
    recipe.update(changes)
    return recipe


def _cached(report: dict) -> list[bool]:
    return [bool(p.get("cached")) for p in report["passes"]]


def _entries(root: Path) -> list[Path]:
    return sorted((root / stage_cache.LAYOUT / "entries").glob("*/*"))


def test_unchanged_recipe_is_a_hit_with_identical_outputs(tmp_path, write_recipe):
    path = write_recipe(_recipe(tmp_path))
    cold = trtopt.compile(path)
    model = (tmp_path / "out" / "model.onnx").read_bytes()
    assert cold.report["cache"]["compile"] == "miss"
    assert _cached(cold.report) == [False, False, False]

    warm = trtopt.compile(path)
    assert warm.exit_code == cold.exit_code == 0
    assert warm.report["cache"]["compile"] == "hit"
    assert _cached(warm.report) == [True, True, True]
    assert (tmp_path / "out" / "model.onnx").read_bytes() == model
    assert warm.report["accuracy"] == cold.report["accuracy"]
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["cache"]["compile"] == "hit"


def test_another_output_folder_reuses_the_compile(tmp_path, write_recipe):
    path = write_recipe(_recipe(tmp_path))
    trtopt.compile(path)
    other = trtopt.compile(path, output_dir=tmp_path / "elsewhere")
    assert other.report["cache"]["compile"] == "hit"
    assert other.report["output_dir"] == str((tmp_path / "elsewhere").resolve())
    assert (tmp_path / "elsewhere" / "model.onnx").is_file()


def test_a_check_change_reruns_the_check_but_reuses_every_pass(tmp_path, write_recipe):
    trtopt.compile(write_recipe(_recipe(tmp_path)))
    changed = _recipe(tmp_path)
    changed["check"] = {**changed["check"], "samples": 3}
    result = trtopt.compile(write_recipe(changed))
    assert result.report["cache"]["compile"] == "miss"
    assert _cached(result.report) == [True, True, True]
    assert result.report["accuracy"]["samples"] == 3


def test_a_pass_option_change_reruns_that_pass_and_the_ones_after(tmp_path, write_recipe):
    trtopt.compile(write_recipe(_recipe(tmp_path)))
    changed = _recipe(
        tmp_path, passes=["cleanup", {"fold-constants": {"size_threshold": "1MiB"}}, "cleanup"]
    )
    result = trtopt.compile(write_recipe(changed))
    assert _cached(result.report) == [True, False, False]


def test_data_joins_the_key_only_of_passes_that_read_it(tmp_path, write_recipe):
    plugin = tmp_path / "count_feeds.py"
    plugin.write_text(READS_FEEDS)
    recipe = _recipe(tmp_path, passes=["cleanup", "count-feeds"], plugins=[str(plugin)])
    trtopt.compile(write_recipe(recipe))
    again = trtopt.compile(write_recipe(recipe))
    assert again.report["cache"]["compile"] == "hit"

    recipe["check"] = {**recipe["check"], "seed": 7}  # other check data
    result = trtopt.compile(write_recipe(recipe))
    assert _cached(result.report) == [True, False]  # cleanup read no data; count-feeds did
    assert result.report["passes"][1]["details"] == {"feeds": 2}


def test_large_models_keep_only_the_stages_of_passes_that_read_data(
    tmp_path, write_recipe, monkeypatch
):
    """Writing a multi-GiB stage costs more than recomputing a pass that reads no data."""
    from trtopt import pipeline, stages

    for module in (pipeline, stages):  # the model counts as large
        monkeypatch.setattr(module, "EXTERNAL_DATA_THRESHOLD", 1024)
    plugin = tmp_path / "count_feeds.py"
    plugin.write_text(READS_FEEDS)
    recipe = _recipe(tmp_path, passes=["cleanup", "count-feeds"], plugins=[str(plugin)])
    trtopt.compile(write_recipe(recipe))
    recipe["check"] = {**recipe["check"], "latency_runs": 1}  # the compile itself is a miss
    result = trtopt.compile(write_recipe(recipe))
    assert result.report["cache"]["compile"] == "miss"
    assert _cached(result.report) == [False, True]


def test_plugin_code_joins_the_key(tmp_path, write_recipe):
    plugin = tmp_path / "count_feeds.py"
    plugin.write_text(READS_FEEDS)
    recipe = _recipe(tmp_path, passes=["count-feeds"], plugins=[str(plugin)])
    trtopt.compile(write_recipe(recipe))
    plugin.write_text(READS_FEEDS.replace('ctx.details["feeds"]', 'ctx.details["n"]'))
    # a fresh process: the edited plugin must be imported anew
    result = run_cli("compile", str(write_recipe(recipe)))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert _cached(report) == [False] and report["passes"][0]["details"] == {"n": 2}


USES_HELPER = """
from trtopt import Pass, register_pass

import feeds_helper


@register_pass("helped")
class Helped(Pass):
    \"\"\"Note what the helper module beside the plugin says (and change nothing).\"\"\"

    def run(self, graph, ctx):
        ctx.details["said"] = feeds_helper.SAID
        return graph
"""


def test_a_plugin_helper_module_joins_the_key(tmp_path, write_recipe):
    """A helper module the plugin imports from its folder is plugin code: editing it is a
    miss, not a stale hit (each compile a fresh process, so the edit is imported)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "helped.py").write_text(USES_HELPER)
    (folder / "feeds_helper.py").write_text('SAID = "first"\n')
    path = write_recipe(_recipe(tmp_path, passes=["helped"], plugins=[str(folder / "helped.py")]))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
    assert run_cli("compile", str(path), env=env).returncode == 0
    (folder / "feeds_helper.py").write_text('SAID = "second"\n')
    result = run_cli("compile", str(path), env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert _cached(report) == [False] and report["passes"][0]["details"] == {"said": "second"}


def test_plugin_files_follow_imports_within_the_plugin_folder(tmp_path):
    root = tmp_path / "plugins"
    (root / "pkg").mkdir(parents=True)
    plugin = root / "plugin.py"
    plugin.write_text(
        "import os, helper\nfrom pkg import sub\nfrom . import rel\nfrom .. import outside\n"
        "def later():\n    import lazy\n"
    )
    (root / "helper.py").write_text("from pkg.deep import thing\n")  # transitive
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub.py").write_text("")
    (root / "pkg" / "deep.py").write_text("import numpy\n")
    (root / "rel.py").write_text("")
    (root / "lazy.py").write_text("")
    (root / "unused.py").write_text("")
    (tmp_path / "outside.py").write_text("")  # not under the plugin's folder
    found = {p.relative_to(root).as_posix() for p in stage_cache.plugin_files(plugin)}
    assert found == {
        "plugin.py", "helper.py", "pkg/__init__.py", "pkg/sub.py", "pkg/deep.py", "rel.py",
        "lazy.py",
    }  # fmt: skip


def test_library_versions_join_the_key(tmp_path, write_recipe, monkeypatch):
    path = write_recipe(_recipe(tmp_path))
    trtopt.compile(path)
    changed = {**stage_cache.environment(), "onnxruntime": "0.0.0-other"}
    for module in (cache_keys, unchanged):  # the keys, and the recipe's direct entry
        monkeypatch.setattr(module, "environment", lambda: changed)
    result = trtopt.compile(path)
    assert result.report["cache"]["compile"] == "miss"
    assert _cached(result.report) == [False, False, False]


def test_a_damaged_entry_is_a_miss_not_a_wrong_result(tmp_path, write_recipe):
    path = write_recipe(_recipe(tmp_path))
    cold = trtopt.compile(path)
    model = (tmp_path / "out" / "model.onnx").read_bytes()
    root = Path(cold.report["cache"]["dir"])
    for entry in _entries(root):
        for file in (entry / "files").iterdir():
            data = bytearray(file.read_bytes())
            data[len(data) // 2] ^= 0xFF
            file.write_bytes(bytes(data))
    result = trtopt.compile(path)
    assert result.report["cache"]["compile"] == "miss"
    assert _cached(result.report) == [False, False, False]
    assert (tmp_path / "out" / "model.onnx").read_bytes() == model


def test_no_cache_reads_and_writes_nothing(tmp_path, write_recipe, monkeypatch):
    monkeypatch.setenv("TRTOPT_CACHE_DIR", str(tmp_path / "cache"))
    path = write_recipe(_recipe(tmp_path))
    result = trtopt.compile(path, use_cache=False)
    assert result.report["cache"] is None
    assert not (tmp_path / "cache").exists()
    disabled = write_recipe(_recipe(tmp_path, cache={"enabled": False}), "off.yaml")
    assert trtopt.compile(disabled).report["cache"] is None
    assert main(["compile", str(path), "--no-cache"]) == 0
    assert not (tmp_path / "cache").exists()


def test_cache_folder_precedence(tmp_path, write_recipe, monkeypatch):
    recipe = write_recipe(_recipe(tmp_path, cache={"dir": "recipe-cache"}))
    monkeypatch.delenv("TRTOPT_CACHE_DIR")
    assert trtopt.compile(recipe).report["cache"]["dir"] == str(tmp_path / "recipe-cache")
    monkeypatch.setenv("TRTOPT_CACHE_DIR", str(tmp_path / "env-cache"))
    assert trtopt.compile(recipe).report["cache"]["dir"] == str(tmp_path / "env-cache")
    chosen = trtopt.compile(recipe, cache_dir=tmp_path / "flag-cache")
    assert chosen.report["cache"]["dir"] == str(tmp_path / "flag-cache")
    assert _entries(tmp_path / "flag-cache")


def test_default_folder_follows_the_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("TRTOPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert stage_cache.default_cache_dir() == tmp_path / "xdg" / "trtopt"
    monkeypatch.setenv("TRTOPT_CACHE_DIR", str(tmp_path / "env"))
    assert stage_cache.default_cache_dir() == tmp_path / "env"


def test_racing_writers_publish_one_complete_entry(tmp_path):
    store = StageCache(tmp_path / "cache")
    payload = b"x" * (1 << 20)

    def write() -> None:
        with store.writer("k" * 64, "test") as entry:
            (entry.folder / "blob").write_bytes(payload)
            entry.meta = {"size": len(payload)}

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entry = store.get("k" * 64)
    assert entry is not None and entry.file("blob").read_bytes() == payload
    assert len(_entries(tmp_path / "cache")) == 1
    assert not list(store.tmp.iterdir())  # the losers' copies are gone


def test_two_compiles_share_one_cache_concurrently(tmp_path, write_recipe):
    cache = tmp_path / "shared"
    paths = []
    for i in range(2):
        recipe = _recipe(tmp_path, output=str(tmp_path / f"out{i}"))
        paths.append(write_recipe(recipe, f"r{i}.yaml"))
    command = [sys.executable, "-m", "trtopt", "compile", "--cache-dir", str(cache)]
    procs = [
        subprocess.Popen([*command, str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for p in paths
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    store = StageCache(cache)
    entries = _entries(cache)
    assert entries and all(store.get(e.name) is not None for e in entries)
    one, two = ((tmp_path / f"out{i}" / "model.onnx").read_bytes() for i in range(2))
    assert one == two


def test_cache_info_and_prune(tmp_path, write_recipe, capsys):
    cache = tmp_path / "cache"
    assert main(["compile", str(write_recipe(_recipe(tmp_path))), "--cache-dir", str(cache)]) == 0
    store = StageCache(cache)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    leftover = store.tmp / f"{socket.gethostname()}-{dead.stdout.strip()}-abc"
    (leftover / "files").mkdir(parents=True)
    capsys.readouterr()

    assert main(["cache", "info", "--json", "--cache-dir", str(cache)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entries"] == 5 and data["by_kind"] == {"compile": 1, "direct": 1, "pass": 3}
    assert data["leftovers"] == 1 and data["bytes"] > 0

    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "removed 0 entries" in out and "1 leftovers" in out
    assert not leftover.exists()

    assert main(["cache", "prune", "--max-size", "lots", "--cache-dir", str(cache)]) == 2
    assert "not a size" in capsys.readouterr().err

    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", str(cache)]) == 0
    assert "removed 5 entries" in capsys.readouterr().out
    assert trtopt.cache_info(cache).entries == 0


def test_prune_drops_entries_of_other_versions_first(tmp_path, monkeypatch):
    store = StageCache(tmp_path / "cache")
    with store.writer("a" * 64, "test") as entry:
        (entry.folder / "blob").write_bytes(b"old")
    monkeypatch.setattr(
        stage_cache, "environment", lambda: {"trtopt-sources": "other", "onnx": "9"}
    )
    with store.writer("b" * 64, "test") as entry:
        (entry.folder / "blob").write_bytes(b"new")
    result = store.prune()
    assert result.removed == 1 and result.kept == 1
    assert store.get("b" * 64) is not None and store.get("a" * 64) is None


@pytest.mark.parametrize("content", ["a file, not a folder"])
def test_an_unusable_cache_folder_never_fails_the_compile(tmp_path, write_recipe, content):
    blocker = tmp_path / "blocked"
    blocker.write_text(content)
    result = trtopt.compile(write_recipe(_recipe(tmp_path)), cache_dir=blocker)
    assert result.exit_code == 0
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_a_hit_reuses_the_plots_its_compile_drew(tmp_path, write_recipe, monkeypatch):
    pytest.importorskip("matplotlib")
    from trtopt import html

    path = write_recipe(_recipe(tmp_path))
    first = (trtopt.compile(path).output_dir / "report.html").read_text()

    def no_drawing(*args, **kwargs):
        raise AssertionError("a hit drew a plot again")

    for name in ("_output_plot", "_passes_plot", "_latency_plot"):
        monkeypatch.setattr(html, name, no_drawing)
    hit = trtopt.compile(path)
    assert hit.report["cache"]["compile"] == "hit"
    page = (hit.output_dir / "report.html").read_text()
    assert page.count("<img") == first.count("<img") > 0
