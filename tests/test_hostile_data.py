"""Hostile data: scripts that exit, crash or hang in their child process; data that cannot
gate (NaN, Inf, no rows, no outputs) and the strict JSON trtopt writes; bad tensors, images
and arrays. Each case is exit 2 naming the file: never a hang, a crash or a faked success."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

import trtopt
from helpers import ROOT
from trtopt.cli import main

QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"


@pytest.fixture(autouse=True)
def _keep_sigterm():
    """main() installs a SIGTERM handler; give the test process its own back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _recipe(tmp_path: Path, **changes: object) -> Path:
    recipe = {
        "name": "hostile",
        "model": str(QUICKSTART_MODEL),
        "inputs": {"pixel_values": {"range": [0.0, 1.0]}},
        "passes": ["cleanup"],
        "check": {"samples": 1, "dims": {"batch": 1}, "latency_runs": 0},
        "output": str(tmp_path / "out"),
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _script_recipe(tmp_path: Path, script: str, **source: object) -> Path:
    (tmp_path / "data.py").write_text(script)
    data = {"script": str(tmp_path / "data.py"), **source}
    return _recipe(tmp_path, check={"samples": 2, "latency_runs": 0, "data": data})


FEED = "{'pixel_values': np.zeros((1, 3, 32, 32), np.float32)}"


# -- data scripts run in a child process --------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("import os\nos._exit(0)\n", "exited with code 0"),
        (
            f"import os\nimport numpy as np\ndef load_data():\n    yield {FEED}\n    os._exit(0)\n",
            "exited with code 0 before load_data() finished (item 1)",
        ),
        (
            "import os, signal\ndef load_data():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "    yield {}\n",
            "killed by signal 9",
        ),
        ("def load_data():\n    while True:\n        pass\n    yield {}\n", "timeout_s=1 s"),
        ("import time\ntime.sleep(60)\n", "timeout_s=1 s"),
    ],
    ids=["os._exit-at-import", "os._exit-while-yielding", "sigkill", "endless-loop", "hang"],
)
def test_a_data_script_that_exits_or_hangs_is_a_data_error(tmp_path, capsys, script, message):
    recipe = _script_recipe(tmp_path, script, timeout_s=1)
    assert main(["compile", str(recipe), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "data.py" in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_data_script_runs_in_a_child_and_its_prints_do_not_corrupt_the_feeds(tmp_path, capfd):
    script = (
        "import os, sys\nimport numpy as np\nprint('noise on stdout')\n"
        "sys.stdout.buffer.write(b'F' * 64)\n"
        "def load_data():\n"
        "    for i in range(2):\n"
        "        print('pid', os.getpid())\n"
        "        yield {'pixel_values': np.full((1, 3, 32, 32), i / 2, np.float32)}\n"
    )
    result = trtopt.compile(_script_recipe(tmp_path, script), use_cache=False)
    assert result.exit_code == 0, result.error
    assert result.report["accuracy"]["samples"] == 2
    err = capfd.readouterr().err
    assert "noise on stdout" in err and f"pid {os.getpid()}" not in err and "pid " in err, err


def test_a_data_script_timeout_must_be_positive(tmp_path, capsys):
    recipe = _script_recipe(tmp_path, "", timeout_s=0)
    assert main(["validate", str(recipe)]) == 2
    assert "timeout_s" in capsys.readouterr().err
