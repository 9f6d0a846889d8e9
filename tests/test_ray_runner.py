"""`trtopt compile RECIPES --ray ADDRESS` against real Ray clusters started on loopback: every
recipe a task, resources by backend, artifacts back in the caller's output folders, the same
table and exit code as a local batch."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import trtopt
from helpers import ROOT, run_cli
from trtopt.cli import main
from trtopt.ray_runner import Resources, resources_for, unsatisfiable

RECIPES = ROOT / "recipes"
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage reports leave the machine
    # Ray's single-machine mode: every service binds to 127.0.0.1, not the host's address.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    process: subprocess.Popen


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _live_processes() -> dict[int, tuple[int, int]]:
    """Every live (not zombie) process: pid -> (parent pid, process group)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            state, ppid, pgrp = stat.rpartition(")")[2].split()[:3]
            if state != "Z":
                found[int(entry)] = (int(ppid), int(pgrp))
    return found


def _cluster_processes(groups: set[int]) -> set[int]:
    """The processes of the clusters whose `ray start` led ``groups``, and their
    descendants: Ray's workers start process groups of their own, and its agents overwrite
    their environment with their titles, so neither a group nor a marker finds them all."""
    live = _live_processes()
    found = {pid for pid, (_, pgrp) in live.items() if pgrp in groups}
    while True:
        children = {pid for pid, (ppid, _) in live.items() if ppid in found} - found
        if not children:
            return found
        found |= children


def _stop(groups: set[int]) -> None:
    """SIGTERM, then SIGKILL, to exactly the processes the test clusters started (not `ray
    stop`, which ends every Ray process of the user, other test runs' included)."""
    targets = _cluster_processes(groups)
    for sig, grace_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):
        for pid in targets & set(_live_processes()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while targets & set(_live_processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        targets |= _cluster_processes(groups)


def _start(*extra: str) -> Cluster:
    """Begin `ray start --head` for a one-node cluster on loopback (it returns once up)."""
    # A short folder: Ray's Unix sockets live under it (108-byte path limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port = _free_port()
    command = [
        *(sys.executable, "-m", "ray.scripts.scripts", "start", "--head"),
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={100 << 20}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        *extra,
    ]
    env = {
        **os.environ,
        **RAY_ENV,
        "TRTOPT_CACHE_DIR": str(temp_dir / "trtopt-cache"),  # the workers' stage cache
    }
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return Cluster(f"127.0.0.1:{port}", temp_dir, process)


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[str, Cluster]]:
    """Two one-node clusters, started side by side: `cpu` (two CPUs, no GPU) and `l4` (also
    one GPU of accelerator type L4: Ray takes a node's GPUs as declared, so a GPU-less machine
    can pose as one). Stopped at the module's end, whatever the tests did."""
    pytest.importorskip("ray", reason="the ray extra (part of the test extra) is not installed")
    if sys.platform != "linux":
        pytest.skip("the teardown finds the clusters' processes through /proc")
    started: dict[str, Cluster] = {}
    try:
        started["cpu"] = _start("--num-gpus=0")
        started["l4"] = _start("--num-gpus=1", '--resources={"accelerator_type:L4": 1}')
        for cluster in started.values():
            output, _ = cluster.process.communicate(timeout=120)
            assert cluster.process.returncode == 0, output
        yield started
    finally:
        for cluster in started.values():
            if cluster.process.poll() is None:
                cluster.process.kill()
                cluster.process.wait()
        # `ray start` (own session: its pid leads the group) returns; its services stay.
        groups = {cluster.process.pid for cluster in started.values()}
        _stop(groups)
        for cluster in started.values():
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        left = _cluster_processes(groups)
        assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def cluster(clusters: dict[str, Cluster]) -> Cluster:
    """A cluster with two CPUs and no GPU."""
    return clusters["cpu"]


def _cli(*args: str) -> subprocess.Popen:
    """`python -m trtopt ARGS` started in the background, as a user's shell would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **RAY_ENV}
    command = [sys.executable, "-m", "trtopt", *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _rows(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by recipe: [verdict, exit, seconds, output / message]."""
    rows = {}
    for line in stdout.strip().splitlines()[1:-1]:
        recipe, verdict, code, seconds, *detail = line.split(maxsplit=4)
        rows[Path(recipe).name] = [verdict, code, seconds, *detail]
    return rows


def _extending(tmp_path: Path, base: str, name: str, **changes: object) -> Path:
    """A recipe in tmp_path that extends a shipped one."""
    path = tmp_path / f"{name}.yaml"
    recipe = {"extends": str(RECIPES / base), "name": name, **changes}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _metrics(the_report: dict) -> dict[str, dict[str, float]]:
    return {name: output["metrics"] for name, output in the_report["accuracy"]["outputs"].items()}


@pytest.mark.slow
def test_recipes_compile_on_the_cluster_as_they_do_locally(tmp_path, cluster):
    missing = _extending(tmp_path, "quickstart.yaml", "missing", model="nowhere.onnx")
    out = tmp_path / "out"
    (out / "missing").mkdir(parents=True)
    (out / "missing" / "model.onnx").write_text("previous good output")
    recipes = [str(RECIPES / "quickstart.yaml"), str(RECIPES / "cnn-fp16.yaml"), str(missing)]

    farm = _cli("compile", *recipes, "--ray", cluster.address, "-o", str(out))
    try:  # meanwhile, the same recipes compiled here, as the reference
        local = {
            name: trtopt.compile(RECIPES / f"{name}.yaml", output_dir=tmp_path / "local" / name)
            for name in ("quickstart", "cnn-fp16")
        }
        stdout, stderr = farm.communicate(timeout=300)
    finally:
        farm.kill()
        farm.wait()

    assert farm.returncode == 2, stdout + stderr
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["recipe", "verdict", "exit", "seconds"]
    assert lines[-1] == "3 recipes: 1 error, 2 pass; exit code 2"
    rows = _rows(stdout)
    assert rows["quickstart.yaml"][:2] == ["pass", "0"]
    assert rows["quickstart.yaml"][3] == str(out / "quickstart")
    assert rows["cnn-fp16.yaml"][:2] == ["pass", "0"]
    assert rows["missing.yaml"][:2] == ["error", "2"]
    assert f"{tmp_path / 'nowhere.onnx'}: model file not found" in rows["missing.yaml"][3]
    # The failed recipe left its previous output alone.
    assert (out / "missing" / "model.onnx").read_text() == "previous good output"

    for name in ("quickstart", "cnn-fp16"):
        shipped = out / name
        text = (shipped / "report.json").read_text()
        assert "trtopt-ray-" not in text  # no path into the worker's temporary folder
        remote = json.loads(text)
        assert remote["output_dir"] == str(shipped)
        assert remote["built_on"]["ray_node"]
        assert {"model.onnx", "report.md", "report.html"} <= {p.name for p in shipped.iterdir()}
        assert (remote["verdict"], remote["exit_code"]) == (local[name].report["verdict"], 0)
        assert remote["golden"]["verdict"] == local[name].report["golden"]["verdict"] == "pass"
        # Same graph, byte for byte (compiles are deterministic), and the same accuracy.
        assert (shipped / "model.onnx").read_bytes() == local[name].artifact.read_bytes()
        for output, metrics in _metrics(local[name].report).items():
            for metric, value in metrics.items():
                assert _metrics(remote)[output][metric] == pytest.approx(value, 1e-3, 1e-6)


@pytest.mark.slow
def test_a_tensorrt_recipe_fails_at_once_where_no_node_has_a_gpu(tmp_path, cluster):
    h100 = _extending(
        tmp_path, "quickstart-tensorrt.yaml", "on-h100", build={"tensorrt": {"gpu": "H100"}}
    )
    trt = str(RECIPES / "quickstart-tensorrt.yaml")
    out = tmp_path / "out"
    farm = _cli("compile", trt, str(h100), "-o", str(out), "--ray", cluster.address)
    try:  # a request nothing can satisfy must fail, not wait for a GPU forever
        stdout, stderr = farm.communicate(timeout=120)
    finally:
        farm.kill()
        farm.wait()
    assert farm.returncode == 2, stdout + stderr
    rows = _rows(stdout)
    assert rows["quickstart-tensorrt.yaml"][:2] == ["error", "2"]
    message = rows["quickstart-tensorrt.yaml"][3]
    assert message.startswith(f"{RECIPES / 'quickstart-tensorrt.yaml'}:")  # build.backend
    assert "no node of the Ray cluster has a GPU" in message
    assert rows["on-h100.yaml"][:2] == ["error", "2"]
    assert "accelerator type 'H100' (it has no GPU)" in rows["on-h100.yaml"][3]
    assert not out.exists()


@pytest.mark.slow
def test_a_named_accelerator_type_builds_on_that_gpu(tmp_path, clusters):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("the cluster pretends to have a GPU: TensorRT would try to build there")
    gpu = clusters["l4"]
    l4 = _extending(
        tmp_path, "quickstart-tensorrt.yaml", "on-l4", build={"tensorrt": {"gpu": "L4"}}
    )
    h100 = _extending(
        tmp_path, "quickstart-tensorrt.yaml", "on-h100", build={"tensorrt": {"gpu": "H100"}}
    )
    out = tmp_path / "out"
    result = run_cli(
        "compile", str(l4), str(h100), "--ray", gpu.address, "-o", str(out), env=RAY_ENV
    )

    rows = _rows(result.stdout)
    assert "accelerator type 'H100' (GPU types there: L4)" in rows["on-h100.yaml"][3]
    # The L4 recipe ran on the (pretend) L4 node: without the TensorRT package the compile
    # runs everything else and reports the build unavailable, and that output came back.
    assert rows["on-l4.yaml"][:2] == ["incomplete", "2"]
    assert "pip install 'trtopt[tensorrt]'" in rows["on-l4.yaml"][3]
    assert str(out / "on-l4") in rows["on-l4.yaml"][3]
    the_report = json.loads((out / "on-l4" / "report.json").read_text())
    assert the_report["output_dir"] == str(out / "on-l4")
    assert the_report["build"]["status"] == "unavailable"
    assert the_report["accuracy"]["verdict"] == "pass"
    assert result.returncode == 2


def test_jobs_and_ray_exclude_each_other(capsys):
    code = main(["compile", str(RECIPES / "quickstart.yaml"), "--ray", "auto", "--jobs", "2"])
    assert code == 2
    assert "--jobs: --jobs sets local processes; with --ray" in capsys.readouterr().err


def test_ray_missing_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["compile", str(RECIPES / "quickstart.yaml"), "--ray", "auto"])
    assert code == 2
    assert "pip install 'trtopt[ray]'" in capsys.readouterr().err


def test_nothing_listening_at_the_address_is_a_user_error(capsys):
    pytest.importorskip("ray", reason="the ray extra (part of the test extra) is not installed")
    address = f"127.0.0.1:{_free_port()}"
    code = main(["compile", str(RECIPES / "quickstart.yaml"), "--ray", address])
    assert code == 2
    assert f"--ray {address}: no Ray cluster answers there" in capsys.readouterr().err


def test_resources_follow_the_backend():
    def recipe(build: dict) -> trtopt.Recipe:
        return trtopt.Recipe.model_validate({"name": "r", "model": "m.onnx", "build": build})

    assert resources_for(recipe({})) == Resources(num_cpus=1)
    assert resources_for(recipe({"backend": "tensorrt-rtx"})) == Resources(num_cpus=1)
    assert resources_for(recipe({"backend": "tensorrt"})) == Resources(num_gpus=1)
    named = resources_for(recipe({"backend": "tensorrt", "tensorrt": {"gpu": "A10G"}}))
    assert named.options() == {"num_cpus": 1, "num_gpus": 1, "accelerator_type": "A10G"}
    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0, "accelerator_type:A10G": 1.0}},
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 4.0, "accelerator_type:L4": 1.0}},
    ]
    assert unsatisfiable(Resources(), nodes) is None
    assert unsatisfiable(Resources(num_gpus=1), nodes) is None
    assert unsatisfiable(Resources(num_gpus=1, accelerator_type="L4"), nodes) is None
    assert "'A10G' (GPU types there: L4)" in unsatisfiable(named, nodes)
    assert "has a GPU" in unsatisfiable(Resources(num_gpus=1), nodes[:1])


def test_one_recipe_goes_into_the_output_folder_itself(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake(recipes, address, output_dir, overrides, **options):
        seen["prepared"] = trtopt.batch.prepare(recipes, output_dir, overrides)
        return [trtopt.BatchResult(str(recipes[0]), 0, "pass", None, 0.0)]

    monkeypatch.setattr(trtopt, "compile_on_ray", fake)
    out = tmp_path / "out"
    assert main(["compile", str(RECIPES / "quickstart.yaml"), "--ray", "auto", "-o", str(out)]) == 0
    ((_, output_dir),) = seen["prepared"]
    assert output_dir == str(out)  # as without --ray; several recipes go to out/<name>
    assert capsys.readouterr().out.splitlines()[-1] == "1 recipes: 1 pass; exit code 0"
