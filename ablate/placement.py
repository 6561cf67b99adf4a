"""Placement groups a Train run leaves behind when its controller dies: one janitor per sweep.

Ray Train (2.60) holds each run's worker group in a placement group that the run's controller
creates and removes. A placement group outlives the actor that created it (until the job ends),
so a controller that dies without removing it, as when Tune stops a trial early (it kills the
trial actor, and the controller that actor owns dies with it), would leave the group's CPUs and
GPUs reserved for the rest of the sweep. Train guards against that with one detached
``PlacementGroupCleaner`` actor per run: one more Python process to start with every trial,
importing Ray Train (2.8 CPU-s of each trial's start-up on 2 cores, measured).

``PlacementGroupJanitor`` is that guard for a whole sweep from one actor: every controller
registers its placement group with it (``JanitorCallback``, a Train callback) and unregisters
when it shuts down properly; the janitor checks the registered controllers every
``interval_s`` through Ray's state API (``ray.util.state.get_actor``, as Train's cleaner does)
and removes the placement group of any that is dead. ``start_janitor`` starts it as a named
actor owned by the sweep's driver; ``stop_janitor`` waits for the controllers still registered
to end (removing what they leave), then ends it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import ray

# Ray Train's callback interfaces (Ray 2.60), the ones its own PlacementGroupCleanerCallback
# implements.
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

logger = logging.getLogger(__name__)

#: Seconds between two checks of the registered controllers.
CHECK_INTERVAL_S = 1.0
#: Seconds without an answer from the state API after which ``drain`` stops waiting.
UNANSWERED_S = 10.0


class PlacementGroupJanitor:
    """Actor: removes the placement group of every registered Train controller that dies.

    ``register(controller_id, placement_group)`` (again after a worker group restart: the
    newest group replaces the old one, which the controller removed itself), ``release
    (controller_id)`` when the controller removes its own group, ``drain(timeout_s)`` to wait
    for every registered controller to end. ``removed()`` lists the placement group ids it
    removed (hex), for the sweep's log and for tests.
    """

    def __init__(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._groups: dict[str, Any] = {}  # controller actor id (hex) -> PlacementGroup
        self._removed: list[str] = []
        self._lock = threading.Lock()
        # One check at a time: drain's check then returns only after a removal the watcher
        # had under way is done and recorded (else the janitor could be killed mid-removal).
        self._checking = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="janitor", daemon=True)
        self._thread.start()

    def register(self, controller_id: str, placement_group: Any) -> None:
        with self._lock:
            self._groups[controller_id] = placement_group

    def release(self, controller_id: str) -> None:
        with self._lock:
            self._groups.pop(controller_id, None)

    def removed(self) -> list[str]:
        with self._lock:
            return list(self._removed)

    def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every registered controller to end or release its group
        (checking as the watcher does; it gives up once the state API has not answered for
        ``UNANSWERED_S``, as without a dashboard); returns how many are still registered."""
        deadline = time.monotonic() + timeout_s
        unanswered_since: float | None = None
        while True:
            answered = self._check()
            now = time.monotonic()
            unanswered_since = None if answered else (unanswered_since or now)
            with self._lock:
                left = len(self._groups)
            silent = unanswered_since is not None and now - unanswered_since >= UNANSWERED_S
            if not left or silent or now > deadline:
                return left
            time.sleep(self._interval_s)

    def _watch(self) -> None:
        while True:
            time.sleep(self._interval_s)
            try:
                self._check()
            except Exception:  # a transient state-API failure: the next check retries
                logger.warning("placement-group janitor: check failed", exc_info=True)

    def _check(self) -> bool:
        """Remove the groups of dead controllers; returns whether the state API answered."""
        with self._checking:
            return self._check_once()

    def _check_once(self) -> bool:
        with self._lock:
            watched = list(self._groups.items())
        answered = True
        for controller_id, group in watched:
            alive = _actor_alive(controller_id)
            answered = answered and alive is not None
            if alive is not False:
                continue
            with self._lock:
                if self._groups.get(controller_id) is not group:
                    continue  # released or replaced meanwhile
                del self._groups[controller_id]
            if _remove(group):
                with self._lock:
                    self._removed.append(group.id.hex())
        return answered


def _actor_alive(actor_id: str) -> bool | None:
    """Whether the actor is alive per Ray's state API (it needs the dashboard); None when the
    API cannot tell."""
    from ray.util.state import get_actor

    try:
        state = get_actor(actor_id, timeout=10)
    except Exception:
        return None
    return state is not None and state.state != "DEAD"


def _remove(placement_group: Any) -> bool:
    """Remove a placement group unless it is gone already; returns whether this removed it."""
    from ray.util.placement_group import placement_group_table, remove_placement_group

    if placement_group_table(placement_group).get("state", "REMOVED") == "REMOVED":
        return False
    remove_placement_group(placement_group)
    logger.warning("removed placement group %s of a dead Train controller", placement_group.id)
    return True


def start_janitor() -> tuple[Any, str]:
    """Start a ``PlacementGroupJanitor`` owned by this driver: (handle, its actor name).

    It takes no CPU and runs on this driver's node; it ends with the driver (then Ray removes
    the job's placement groups itself) or at ``stop_janitor``.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = f"ablate-placement-janitor-{uuid.uuid4().hex[:12]}"
    handle = (
        ray.remote(PlacementGroupJanitor)
        .options(
            name=name,
            num_cpus=0,
            max_concurrency=4,  # register/release while drain waits
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=True
            ),
        )
        .remote()
    )
    return handle, name


def stop_janitor(handle: Any, timeout_s: float = 60.0) -> list[str]:
    """Let the janitor see the last controllers end (up to ``timeout_s``), then end it;
    returns the ids of the placement groups it removed over the sweep."""
    try:
        left = ray.get(handle.drain.remote(timeout_s))
        removed = ray.get(handle.removed.remote())
    finally:
        ray.kill(handle)
    if left:
        logger.warning("placement-group janitor: %d Train controllers still running", left)
    return removed


class JanitorCallback(ControllerCallback, WorkerGroupCallback):
    """Ray Train callback (it runs in the controller) that registers each worker group's
    placement group with the janitor named ``janitor_name``, in place of Train's per-run
    ``PlacementGroupCleanerCallback`` (whose two interfaces it implements), and releases it
    when the controller shuts down or aborts: the controller then removes the group itself."""

    def __init__(self, janitor_name: str) -> None:
        self.janitor_name = janitor_name
        self._janitor: Any = None
        self._controller_id: str | None = None

    def after_controller_start(self, train_run_context: Any) -> None:
        self._controller_id = ray.get_runtime_context().get_actor_id()
        self._janitor = ray.get_actor(self.janitor_name)

    def after_worker_group_start(self, worker_group: Any) -> None:
        state = worker_group.get_worker_group_state()
        group = state.placement_group_handle.placement_group
        ray.get(self._janitor.register.remote(self._controller_id, group))

    async def before_controller_shutdown(self) -> None:
        self._release()

    def before_controller_abort(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._janitor is not None:
            self._janitor.release.remote(self._controller_id)
