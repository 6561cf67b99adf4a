"""Safety: a local Ray listens on loopback only with token auth on, and so does a trial's
process group; YAML is read with safe loading, checkpoints are loaded as weights only, no shell
command is built, and every example and test binds its servers to 127.0.0.1."""

from __future__ import annotations

import ast
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import pytest
import requests
import torch
import torch.distributed as dist
import yaml
from local_servers import REPO, child_env, cmdline, descendants, kill_pids, listeners_of
from mlflow.cli import cli as mlflow_cli

from ablate import rendezvous
from ablate.config import resolve
from ablate.spec import SpecError, SpecLoader, parse_sweep

CODE_DIRS = ("ablate", "entrypoints")


def _python_files(*dirs: str) -> list[Path]:
    files = [p for d in dirs for p in sorted((REPO / d).rglob("*.py"))]
    assert files, dirs
    return files


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    """``(dotted name of the callee, call)`` for every call in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            found.append((ast.unparse(node.func), node))
    return found


# ----------------------------------------------------------------------------- YAML


def test_yaml_is_read_with_safe_loading_only(tmp_path):
    unsafe = {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"}
    for path in _python_files(*CODE_DIRS, "tests", "benchmarks"):
        for name, call in _calls(path):
            assert name not in unsafe, f"{path}:{call.lineno}: {name}"
        text = path.read_text()
        if path.name != "test_safety.py":
            assert not re.search(r"\b(Full|Unsafe)Loader\b|yaml\.Loader\b", text), path
    # Specs and --set values are read by spec.safe_load, with a yaml.SafeLoader subclass.
    assert issubclass(SpecLoader, yaml.SafeLoader)
    assert "SpecLoader(text)" in (REPO / "ablate" / "spec.py").read_text()
    # And in behaviour: a tag that would run a command under yaml.load is refused.
    marker = tmp_path / "pwned"
    with pytest.raises(SpecError, match="malformed YAML"):
        parse_sweep(f"name: t\ndescription: !!python/object/apply:os.system ['touch {marker}']")
    assert not marker.exists()


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_are_loaded_as_weights_only():
    loads = [
        (path, call)
        for path in _python_files(*CODE_DIRS)
        for name, call in _calls(path)
        if name == "torch.load"
    ]
    assert loads, "the trial loop restores checkpoints with torch.load"
    for path, call in loads:
        flags = {k.arg: k.value for k in call.keywords}
        value = flags.get("weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"


# ----------------------------------------------------------------------------- shell


def test_no_shell_command_is_built():
    shells = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
    for path in _python_files(*CODE_DIRS):
        for name, call in _calls(path):
            assert name not in shells, f"{path}:{call.lineno}: {name}"
            for keyword in call.keywords:
                if keyword.arg == "shell":
                    assert isinstance(keyword.value, ast.Constant), f"{path}:{call.lineno}"
                    assert keyword.value.value is False, f"{path}:{call.lineno}: shell=True"
            if name.startswith("subprocess."):  # argument lists, never one command string
                first = call.args[0] if call.args else None
                assert not isinstance(first, (ast.Constant, ast.JoinedStr)), (
                    f"{path}:{call.lineno}: {name} with a command string"
                )


# ----------------------------------------------------------------------------- addresses


def test_examples_and_tests_bind_servers_to_loopback():
    texts = {
        path: path.read_text()
        for path in [
            REPO / "README.md",
            REPO / ".ci" / "run",
            *sorted((REPO / "docs").glob("*.md")),
            *sorted((REPO / "search_spaces").glob("*.yaml")),
            *_python_files(*CODE_DIRS, "tests", "benchmarks"),
        ]
    }
    for path, text in texts.items():
        if path.name != "test_safety.py":
            assert "0.0.0.0" not in text, f"{path} binds a server to every interface"
    # The README's servers: `mlflow server` / `mlflow ui` on their default host (127.0.0.1) or
    # a named one; `ray start --head` (which would bind the outward address) always names it.
    readme = texts[REPO / "README.md"]
    for name in ("server", "ui"):
        command = mlflow_cli.get_command(click.Context(mlflow_cli), name)
        assert [p.default for p in command.params if p.name == "host"] == ["127.0.0.1"]
    for command in re.findall(r"mlflow (?:server|ui)\b[^`\n]*", readme):
        host = re.search(r"--host (\S+)", command)
        assert host is None or host.group(1) in ("127.0.0.1", "<head-private-ip>"), command
    heads = re.findall(r"ray start --head\b[^`\n]*", readme)
    assert heads, "the README shows how to start a Ray head"
    for command in heads:
        address = re.search(r"--node-ip-address (\S+)", command)
        assert address and address.group(1) in ("127.0.0.1", "<head-private-ip>"), command
    # Servers the tests start: loopback addresses only.
    servers = (REPO / "tests" / "local_servers.py").read_text()
    assert '"--host",\n            "127.0.0.1"' in servers
    assert '"--node-ip-address",\n            "127.0.0.1"' in servers
    assert '"--dashboard-host",\n            "127.0.0.1"' in servers


@pytest.mark.slow
def test_local_ray_of_a_plain_shell_listens_on_loopback_only_with_token_auth():
    """``start_local_ray`` from a shell without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER or
    RAY_AUTH_MODE, Ray imported first (as ``import ablate.sweep`` does)."""
    code = (
        "import sys, ray\n"
        "from ablate.sweep import start_local_ray\n"
        "context = start_local_ray(num_cpus=1, log_to_driver=False)\n"
        "print(context.dashboard_url, flush=True)\n"
        "sys.stdin.readline()\n"
        "ray.shutdown()\n"
    )
    env = child_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=None, RAY_AUTH_MODE=None, RAY_ADDRESS=None)
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    pids: set[int] = set()
    try:
        dashboard = process.stdout.readline().strip()
        assert dashboard.startswith("127.0.0.1:"), dashboard
        pids = descendants(process.pid)
        sockets = listeners_of(pids)
        names = {cmdline(entry.pid).split()[0].rsplit("/", 1)[-1] for entry in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        assert int(dashboard.rsplit(":", 1)[1]) in {entry.port for entry in sockets}
        exposed = [entry for entry in sockets if not entry.loopback]
        assert exposed == [], exposed
        # Token authentication is on by default: the dashboard refuses a request without it.
        assert requests.get(f"http://{dashboard}/api/jobs/", timeout=10).status_code == 401
        process.stdin.write("\n")
        process.stdin.flush()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        kill_pids([p for p in pids | descendants(process.pid) if p != process.pid], grace_s=5)
        process.wait(timeout=30)


# ----------------------------------------------------------------------------- process group


def _rank(rank: int, ports: multiprocessing.Queue, results: multiprocessing.Queue) -> None:
    """One rank of a 2-process gloo group met through ``ablate.rendezvous``."""
    torch.set_num_threads(1)
    if rank == 0:
        port = rendezvous.open_store(world_size=2, timeout_s=60)
        ports.put(port)
    else:
        port = ports.get(timeout=60)
    rendezvous.join_process_group("gloo", rank, 2, port, timeout_s=60)
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    dist.barrier()  # both ranks' gloo sockets are up while each lists its own
    sockets = [(entry.address, entry.port) for entry in listeners_of({os.getpid()})]
    dist.barrier()
    results.put((rank, total.item(), port, sockets))
    dist.destroy_process_group()
    rendezvous.close_store()


@pytest.mark.distributed
def test_the_process_group_rendezvous_listens_on_loopback_only():
    # Why ablate binds the store's socket itself: torch's own TCPStore server listens on
    # every interface whatever host it is given.
    default = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    assert [e.address for e in listeners_of({os.getpid()}) if e.port == default.port] == ["*"]
    del default

    context = multiprocessing.get_context("spawn")
    ports, results = context.Queue(), context.Queue()
    ranks = [context.Process(target=_rank, args=(r, ports, results)) for r in range(2)]
    for process in ranks:
        process.start()
    try:
        found = sorted(results.get(timeout=120) for _ in ranks)
    finally:
        for process in ranks:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert [row[1] for row in found] == [3.0, 3.0]  # the group works: 1 + 2 on both ranks
    store_port = found[0][2]
    assert store_port in {port for _, port in found[0][3]}  # rank 0 serves the store
    for rank, _, _, sockets in found:
        assert sockets, f"rank {rank}: gloo listens for its peer"
        assert all(address == "127.0.0.1" for address, _ in sockets), (rank, sockets)


@pytest.mark.slow
def test_a_two_worker_trial_listens_on_loopback_only(tmp_path):
    """Every listening socket of a local Ray while a 2-worker trial runs, its workers' process
    group (rendezvous store, gloo) included, is on loopback."""
    import ray

    from ablate.train import fit_trial

    config = resolve(
        {
            "data": {"name": "synthetic", "num_train": 256, "num_test": 64, "synthetic_size": 16},
            "model": {"arch": "resnet18", "width": 4, "out_dim": 16},
            "optim": {"name": "sgd", "base_lr": 0.05, "warmup_epochs": 0},
            "train": {"epochs": 2, "batch_size": 64},
            "eval": {"knn_k": 5, "probe": {"max_iter": 5}},
            "resources": {"num_workers": 2},
        }
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["history"] = fit_trial(config, storage_path=str(tmp_path), name="sockets")
        except BaseException as error:  # re-raised below, in the test's thread
            outcome["error"] = error

    seen = set()
    try:
        trial = threading.Thread(target=fit)
        trial.start()
        while trial.is_alive():
            for entry in listeners_of(descendants(os.getpid())):
                seen.add((entry.address, entry.port, entry.pid, cmdline(entry.pid)))
            time.sleep(0.25)
    finally:
        ray.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["history"][-1]["status"] == "completed"
    workers = {
        (address, port, pid) for address, port, pid, line in seen if "RayTrainWorker" in line
    }
    # Besides Ray's own port, each worker listens for its gloo peer and rank 0 serves the store.
    assert len({pid for _, _, pid in workers}) == 2, workers
    assert len(workers) >= 5, workers
    exposed = sorted(entry for entry in seen if entry[0] not in ("127.0.0.1", "::ffff:127.0.0.1"))
    assert exposed == [], exposed
