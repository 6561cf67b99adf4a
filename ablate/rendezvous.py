"""The rendezvous of a trial's process group: on loopback when every worker shares a node.

Ray Train's torch backend (``ray.train.torch.config._TorchBackend``, Ray 2.60) starts the
rendezvous with ``init_method="env://"``: rank 0's ``torch.distributed.TCPStore`` listens on
``MASTER_PORT`` on every interface (torch binds its store server to the wildcard address whatever
host it is given), and gloo/NCCL pick the interface of the node's hostname for their own
sockets. ``LocalRendezvousTorchConfig`` keeps that for a trial whose workers span nodes, and
otherwise, which includes every trial of a local Ray:

- rank 0 binds a socket to ``127.0.0.1:0`` itself and serves its ``TCPStore`` on it
  (``master_listen_fd``, a listening socket the caller bound, torch >= 2.1);
- the other ranks join that store as clients and every rank calls
  ``init_process_group(backend, store=..., rank, world_size)``;
- gloo and NCCL are pointed at the loopback interface (``GLOO_SOCKET_IFNAME`` and
  ``NCCL_SOCKET_IFNAME``, unless the environment names one already).

So nothing a trial opens listens beyond 127.0.0.1 unless its workers are on different nodes.

This module imports no torch: Train's controller unpickles the backend config and runs the
backend, and a config that subclassed Ray's ``TorchConfig`` (whose module imports torch) made
every trial's controller import torch, 2.3 of its 5.6 CPU-seconds of start-up on 2 cores. The
functions that run on the workers import torch themselves, and Ray's torch backend is used,
unchanged, for a group that spans nodes.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import (
    DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
    TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
)
from ray.train.v2._internal.util import TrainingFramework

LOOPBACK = "127.0.0.1"
IFF_LOOPBACK = 0x8  # <linux/if.h>
# The environment variables that name the interface gloo's and NCCL's sockets use.
SOCKET_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")

# Rank 0's store server (a torch.distributed.TCPStore), kept alive for as long as the worker
# process holds the process group.
_store: Any = None


def loopback_interface() -> str:
    """The name of the loopback network interface (``lo`` on Linux, ``lo0`` on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    for name in names:
        flags = Path("/sys/class/net", name, "flags")
        if flags.exists() and int(flags.read_text(), 16) & IFF_LOOPBACK:
            return name
    return "lo0" if "lo0" in names else "lo"


def open_store(world_size: int, timeout_s: float) -> int:
    """Start this process's ``TCPStore`` server on a free port of 127.0.0.1; returns the port.

    The server is kept in this module (one per process: a previous one is closed) until
    ``close_store``. Raises ``OSError`` if no loopback port can be bound.
    """
    import torch.distributed as dist

    close_store()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(max(world_size, 1) * 2)
        port = listener.getsockname()[1]
        store = dist.TCPStore(
            LOOPBACK,
            port,
            world_size,
            is_master=True,
            timeout=timedelta(seconds=timeout_s),
            wait_for_workers=False,  # the other ranks learn the port only once this returns
            master_listen_fd=listener.fileno(),
        )
    except BaseException:
        listener.close()
        raise
    listener.detach()  # the store's server owns the descriptor now
    global _store
    _store = store
    return port


def close_store() -> None:
    """Drop this process's store server (``open_store``), if any."""
    global _store
    _store = None


def join_process_group(
    backend: str, rank: int, world_size: int, port: int, timeout_s: float
) -> None:
    """Join the process group whose store rank 0 serves on ``127.0.0.1:port``.

    Rank 0 uses the store of ``open_store``; the others connect to it as clients. Sets
    ``MASTER_ADDR``/``MASTER_PORT`` (for libraries that read them) and points gloo's and NCCL's
    sockets at the loopback interface unless the environment names one.
    """
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = LOOPBACK
    os.environ["MASTER_PORT"] = str(port)
    interface = loopback_interface()
    for name in SOCKET_IFNAME_VARS:
        os.environ.setdefault(name, interface)
    # As Ray's own setup: a timed-out NCCL collective fails instead of hanging.
    nccl_vars = {"TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT"}
    if is_nccl(backend) and not nccl_vars & set(os.environ):
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
    timeout = timedelta(seconds=timeout_s)
    if rank == 0:
        if _store is None:
            raise RuntimeError("rank 0 joins the process group before open_store")
        store = _store
    else:
        store = dist.TCPStore(LOOPBACK, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(
        backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout
    )


def is_nccl(backend: str) -> bool:
    """Whether a ``torch.distributed`` backend string uses NCCL (``nccl``, ``cuda:nccl,...``)."""
    return backend == "nccl" or any(
        item.split(":")[1] == "nccl" for item in backend.split(",") if item.startswith("cuda:")
    )


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _set_distributed_env_vars() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)
    close_store()


class _LocalRendezvousBackend(Backend):
    """Ray Train's torch backend with ``join_process_group``'s rendezvous when the group is on
    one node; Ray's own (``ray.train.torch.config._TorchBackend``) across nodes."""

    share_cuda_visible_devices: bool = True  # as Ray's torch backend

    def on_start(self, worker_group: Any, backend_config: LocalRendezvousTorchConfig) -> None:
        backend = backend_config.backend
        if backend is None or len(set(worker_group.execute(_node_id))) > 1:
            from ray.train.torch.config import _TorchBackend

            return _TorchBackend().on_start(worker_group, backend_config.torch_config())
        world_size = len(worker_group)
        timeout_s = backend_config.timeout_s
        port = worker_group.execute_single(0, open_store, world_size, timeout_s)
        worker_group.execute(_set_distributed_env_vars)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank, join_process_group, backend, rank, world_size, port, timeout_s
                )
                for rank in range(world_size)
            ]
        )

    def on_shutdown(self, worker_group: Any, backend_config: LocalRendezvousTorchConfig) -> None:
        # Ray's shutdown, and rank 0 also closes its store server.
        futures = worker_group.execute_async(_shutdown, len(worker_group) > 1)
        timeout_s = ray_constants.env_integer(
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
        )
        # As Ray's: on a timeout the worker processes still end with the group.
        with contextlib.suppress(ray.exceptions.GetTimeoutError):
            ray.get(futures, timeout=timeout_s)


@dataclass
class LocalRendezvousTorchConfig(BackendConfig):
    """The torch backend config of a ``TorchTrainer`` (the fields of Ray Train's
    ``TorchConfig``) whose process group meets on 127.0.0.1 when every worker of the group runs
    on one node, as the module docstring describes; across nodes, or with ``backend=None``,
    Ray's default rendezvous. Importing it imports no torch (see the module docstring)."""

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self) -> type[Backend]:
        return _LocalRendezvousBackend

    @property
    def train_func_context(self) -> Any:
        # Read where the trainer is built (torch is imported there): the same context as Ray's
        # TorchConfig, which puts each worker on its CUDA device.
        from ray.train.torch.config import TorchConfigContextManager

        return TorchConfigContextManager

    @property
    def framework(self) -> TrainingFramework:
        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "init_method": self.init_method,
            "timeout_s": self.timeout_s,
        }

    def torch_config(self) -> Any:
        """The same settings as Ray Train's ``TorchConfig`` (imports torch)."""
        from ray.train.torch import TorchConfig

        return TorchConfig(**self.to_dict())
