"""Real servers for the tests, on loopback only, stopped by PID: a Ray head started with
``ray start``, an ``mlflow server``, headless Chromium; what listens on which address; and the
placement groups a Ray cluster still holds.

Nothing here is a test; ``test_cluster``, ``test_faults`` and ``test_safety`` use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
#: Runs the sweep entrypoint like `python -m entrypoints.sweep` (argv: its arguments), then says
#: on stderr whether Ray was imported.
RUN_MAIN = (
    "import sys\n"
    "from entrypoints.sweep import main\n"
    "code = main(sys.argv[1:])\n"
    "print('ray imported' if 'ray' in sys.modules else 'ray not imported', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def placement_groups_left() -> list[str]:
    """Ids of the connected Ray cluster's placement groups that are not removed."""
    import ray

    return [
        pg_id for pg_id, pg in ray.util.placement_group_table().items() if pg["state"] != "REMOVED"
    ]


def placement_groups_text() -> str:
    """The connected cluster's placement groups that are not removed, one per line with their
    state and bundles (for a failed assertion's message)."""
    import ray

    return "\n".join(
        f"{pg_id[:12]} {pg['state']} {list(pg['bundles'].values())}"
        for pg_id, pg in ray.util.placement_group_table().items()
        if pg["state"] != "REMOVED"
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    return free_port()


def child_env(**updates: str | None) -> dict[str, str]:
    """This environment with the venv's bin first on PATH (so Ray's job driver finds the
    same ``python``), with ``updates`` applied (``None`` removes a variable)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in updates.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# ----------------------------------------------------------------------------- processes


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def descendants(root: int) -> set[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        parent = _parent(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def pids_mentioning(text: str) -> set[int]:
    """Processes whose command line contains ``text`` (e.g. a session's temp dir)."""
    return {pid for pid in _all_pids() if pid != os.getpid() and text in cmdline(pid)}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def started_at(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (None if gone): with the PID, an
    identity that a reused PID does not share."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def identities(pids: Iterable[int]) -> dict[int, int]:
    """``{pid: start time}`` of the live ``pids``, for ``kill_pids`` later."""
    found = {pid: started_at(pid) for pid in pids}
    return {pid: start for pid, start in found.items() if start is not None}


def kill_pids(pids: Iterable[int] | dict[int, int], grace_s: float = 10.0) -> None:
    """SIGTERM these processes, then SIGKILL those still alive after ``grace_s``.

    Given ``identities(...)``, a PID whose process has since been replaced is left alone.
    """
    if isinstance(pids, dict):
        pids = [pid for pid, start in pids.items() if started_at(pid) == start]
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- sockets


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    pid: int
    process: str

    @property
    def loopback(self) -> bool:
        return self.address in LOOPBACK


def _ss_listeners() -> list[Listener] | None:
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    listeners = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        local = fields[3]
        address, _, port = local.rpartition(":")
        address = address.strip("[]").split("%")[0]
        for name, pid in re.findall(r'\("([^"]*)",pid=(\d+)', line):
            listeners.append(Listener(address, int(port), int(pid), name))
    return listeners


def _hex_address(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def _proc_listeners() -> list[Listener]:
    """Without ``ss``: LISTEN rows of /proc/net/tcp{,6} matched to /proc/<pid>/fd inodes."""
    inodes: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] != "0A":  # TCP_LISTEN
                    continue
                address, port = fields[1].split(":")
                inodes[fields[9]] = (_hex_address(address), int(port, 16))
    listeners = []
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    match = re.fullmatch(r"socket:\[(\d+)\]", target)
                    if match and match.group(1) in inodes:
                        address, port = inodes[match.group(1)]
                        listeners.append(Listener(address, port, pid, cmdline(pid)[:40]))
    return listeners


def listeners_of(pids: Iterable[int]) -> list[Listener]:
    """Every listening TCP socket owned by one of ``pids``."""
    wanted = set(pids)
    table = _ss_listeners()
    if table is None:
        table = _proc_listeners()
    return [entry for entry in table if entry.pid in wanted]


# ----------------------------------------------------------------------------- MLflow server


def wait_http(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with status {process.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def spawn_logged(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``args`` in a session of its own (so its processes can be found and stopped by
    PID), with stdout and stderr written to ``log_path``."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store and artifacts under ``root``.

    ``start()`` launches it, ``wait_ready()`` waits for ``/health``, ``stop()`` ends it and
    its workers by PID (each server runs in its own session).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "mlflow_server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        args = [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
        ]
        self.process = spawn_logged(args, child_env(), self.log_path)
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        assert self.process is not None
        try:
            wait_http(f"{self.uri}/health", timeout_s, self.process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n{self.log_path.read_text()[-3000:]}") from None

    def pids(self) -> set[int]:
        return descendants(self.process.pid) if self.process is not None else set()

    def stop(self) -> None:
        if self.process is None:
            return
        kill_pids(sorted(self.pids(), reverse=True))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


# ----------------------------------------------------------------------------- Ray head


class RayHead:
    """``ray start --head --block`` on 127.0.0.1 with its own temp dir and free ports.

    ``stop()`` does what ``ray stop`` does (SIGTERM, then SIGKILL) to this head's processes,
    found by PID: other sessions' Ray instances are never touched. Token authentication stays
    on (``RAY_AUTH_MODE=token``) with a token of its own (``ray start`` requires one to exist);
    ``env()`` is what a client such as the job CLI needs to use it.
    """

    def __init__(self, num_cpus: int = 2) -> None:
        # Short: Ray's unix sockets live below it (108-byte path limit).
        self.temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.num_cpus = num_cpus
        self.log_path = Path(self.temp_dir) / "ray_start.log"
        self.token_path = Path(self.temp_dir) / "auth_token"
        self.process: subprocess.Popen | None = None

    def env(self, **updates: str | None) -> dict[str, str]:
        """The environment of a process that talks to this head."""
        return child_env(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_AUTH_TOKEN=None,
            **updates,
        )

    def start(self) -> RayHead:
        # What `ray get-auth-token --generate` writes, in a file of this head's own.
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        args = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(self.dashboard_port),
            "--ray-client-server-port",
            str(free_port()),
            # Fixed by default (52365): taken by any other Ray on this machine, which
            # leaves the head without a job agent ("No available agent to submit job").
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--num-cpus",
            str(self.num_cpus),
            "--temp-dir",
            self.temp_dir,
            "--disable-usage-stats",
        ]
        self.process = spawn_logged(
            args, self.env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"), self.log_path
        )
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in self.log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def pids(self) -> set[int]:
        """Every process of this head: below ``ray start --block`` or naming its temp dir."""
        below = descendants(self.process.pid) if self.process is not None else set()
        return below | pids_mentioning(self.temp_dir)

    def stop(self) -> None:
        if self.process is None:
            return
        # What `ray stop` does (SIGTERM, then SIGKILL after a grace period), to this head's
        # processes only. (SIGTERM to `ray start --block` alone drains the node, which can take
        # 30 s after a job.)
        kill_pids(self.pids(), grace_s=5.0)
        kill_pids(pids_mentioning(self.temp_dir), grace_s=2.0)  # any started meanwhile
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- Chromium


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render_page(url: str, screenshot: Path, budget_ms: int = 15000) -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time (React pages render in it), and a
    PNG of the page at ``screenshot``: one headless Chromium run with a new profile."""
    binary = chromium()
    assert binary is not None
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium") as profile:
        done = subprocess.run(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                "--window-size=1600,1000",
                f"--screenshot={screenshot}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    return done.stdout


# ----------------------------------------------------------------------------- drivers, load


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (None if gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def driver_pids(driver: int, ray_temp_dir: str | None = None) -> set[int]:
    """A sweep driver and the local Ray it started, as far as they still run.

    The driver is started in a session of its own (``spawn_logged`` / ``start_new_session``):
    Ray's gcs, raylet, dashboard and workers inherit it, and stay in it after the driver is
    killed (reparented, not re-sessioned). With ``ray_temp_dir`` (the driver's
    ``$RAY_TMPDIR``), processes naming it count too. Never another session's processes.
    """
    found = {pid for pid in _all_pids() if session_of(pid) == driver and alive(pid)}
    if ray_temp_dir:
        found |= {pid for pid in pids_mentioning(ray_temp_dir) if alive(pid)}
    found.discard(os.getpid())
    return found


def ray_train_workers(driver: int) -> list[int]:
    """The Ray Train workers (process title ``ray::RayTrainWorker...``) of a driver's Ray."""
    return sorted(
        pid for pid in driver_pids(driver) if cmdline(pid).startswith("ray::RayTrainWorker")
    )


@contextlib.contextmanager
def cpu_burners(count: int = 2):
    """``count`` processes that each keep one core busy (``while True: pass`` at nice 0), for
    a test that must pass on a loaded machine; killed by PID on exit. Yields their PIDs."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(count)
    ]
    try:
        yield [p.pid for p in processes]
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        for process in processes:
            process.wait(timeout=30)
