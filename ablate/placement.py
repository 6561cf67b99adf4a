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
``interval_s`` in the GCS's actor table (Train's cleaner asks ``ray.util.state.get_actor``,
which needs the dashboard) and removes the placement group of any that is dead. It also
removes every placement group of the sweep's job whose creator actor is dead
(``actor_groups``), which covers a group still waiting to be placed when its controller
died: such a group was placed later and kept the cores reserved, freezing the sweep (issue 22).
A controller counts as ended once its process is gone, not when the GCS first calls it dead:
``ray.kill`` marks it dead at once, and one killed while it starts a worker group can still
create that group (seen on loaded cores, where the group then outlived the sweep).
``start_janitor`` starts it as a named actor owned by the sweep's driver; ``stop_janitor`` waits
for the controllers still registered to end (removing what they leave), then ends it.
"""

from __future__ import annotations

import _thread
import logging
import signal
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
#: Seconds between ``drain``'s check that found nothing left and the one that confirms it.
SETTLE_S = 0.25
#: Seconds a controller may stay dead with its process still reported running before it counts
#: as gone anyway (a lost node reports no process exit).
DYING_S = 30.0
#: Seconds without an answer from the GCS after which ``drain`` stops waiting.
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
        # Every controller that asked for or holds a group, until its process is gone: ray.kill
        # marks an actor dead before its process exits, and a controller killed while it
        # starts a worker group can still create one in between (seen under load).
        self._controllers: set[str] = set()
        self._dying_since: dict[str, float] = {}  # controller -> when first seen dying (monotonic)
        self._trials: dict[str, str] = {}  # controller actor id -> its Train run's name (trial)
        # controller actor id -> (since when, wall-clock s; the worker group's bundles)
        self._waiting: dict[str, tuple[float, list[dict[str, float]]]] = {}
        self._removed: list[str] = []
        self._job_id = ray.get_runtime_context().get_job_id()
        self._live_groups = 0  # groups of the job whose creator lives, at the last check
        self._lock = threading.Lock()
        # One check at a time: drain's check then returns only after a removal the watcher
        # had under way is done and recorded (else the janitor could be killed mid-removal).
        self._checking = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="janitor", daemon=True)
        self._thread.start()

    def register(self, controller_id: str, placement_group: Any, trial: str | None = None) -> None:
        with self._lock:
            self._groups[controller_id] = placement_group
            self._controllers.add(controller_id)
            self._waiting.pop(controller_id, None)
            if trial is not None:
                self._trials[controller_id] = trial

    def waiting(self, controller_id: str, trial: str, bundles: list[dict[str, float]]) -> None:
        """The controller of ``trial`` asks the cluster for a worker group of ``bundles``; a
        retried request keeps the time of the first one."""
        with self._lock:
            self._controllers.add(controller_id)
            self._trials[controller_id] = trial
            since = self._waiting.get(controller_id, (time.time(), bundles))[0]
            self._waiting[controller_id] = (since, bundles)

    def release(self, controller_id: str) -> None:
        with self._lock:
            self._controllers.discard(controller_id)
            self._dying_since.pop(controller_id, None)
            self._groups.pop(controller_id, None)
            self._waiting.pop(controller_id, None)
            self._trials.pop(controller_id, None)

    def view(self) -> dict[str, Any]:
        """What this sweep's trials hold and wait for: ``{"holding": [{"trial",
        "placement_group" (hex id)}], "waiting": [{"trial", "waited_s", "bundles"}]}``."""
        now = time.time()
        with self._lock:
            return {
                "holding": [
                    {"trial": self._trials.get(c, "?"), "placement_group": g.id.hex()}
                    for c, g in self._groups.items()
                ],
                "waiting": [
                    {"trial": self._trials.get(c, "?"), "waited_s": now - since, "bundles": b}
                    for c, (since, b) in self._waiting.items()
                ],
            }

    def removed(self) -> list[str]:
        with self._lock:
            return list(self._removed)

    def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every registered controller (holding its group or
        waiting for it) to release it or to end, its process gone, and for every group of the
        job made by a live actor to go (checking as the watcher does, orphans removed; it gives
        up once the GCS has not answered for ``UNANSWERED_S``); returns how many are still
        left. It returns after two checks in a row found nothing left: the second catches a
        group whose creation reached the GCS after its creator's end did."""
        deadline = time.monotonic() + timeout_s
        unanswered_since: float | None = None
        clear_checks = 0
        while True:
            answered = self._check()
            now = time.monotonic()
            unanswered_since = None if answered else (unanswered_since or now)
            with self._lock:
                # A group whose creator just died may not be flagged an orphan yet.
                left = max(len(self._controllers), self._live_groups)
            clear_checks = 0 if left else clear_checks + 1
            silent = unanswered_since is not None and now - unanswered_since >= UNANSWERED_S
            if clear_checks >= 2 or silent or now > deadline:
                return left
            time.sleep(SETTLE_S if clear_checks else self._interval_s)

    def stop(self) -> None:
        """End the watcher thread (the actor's own end, ``ray.kill``, ends it too)."""
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self._check()
            except Exception:  # a transient state-API failure: the next check retries
                logger.warning("placement-group janitor: check failed", exc_info=True)

    def _check(self) -> bool:
        """Remove the groups of dead controllers; returns whether the GCS answered."""
        with self._checking:
            return self._check_once()

    def _check_once(self) -> bool:
        with self._lock:
            controllers = list(self._controllers)
        # Read before the group table: a controller found gone made every group it ever will.
        states = {c: _actor_state(c) for c in controllers}
        answered = None not in states.values()
        now = time.monotonic()
        for controller_id, state in states.items():
            if state not in ("dying", "gone"):
                continue
            if state == "dying":
                since = self._dying_since.setdefault(controller_id, now)
                state = "gone" if now - since > DYING_S else state
            with self._lock:
                self._waiting.pop(controller_id, None)
                group = self._groups.pop(controller_id, None)
                if state == "gone":
                    self._controllers.discard(controller_id)
                    self._trials.pop(controller_id, None)
                    self._dying_since.pop(controller_id, None)
            if group is not None and _remove(group):
                with self._lock:
                    self._removed.append(group.id.hex())
        try:
            groups = actor_groups(self._job_id)
        except Exception:  # a slow or restarting GCS: the next check retries
            logger.warning("placement-group janitor: reading the group table failed", exc_info=True)
            return False
        alive = 0
        for group, orphaned in groups:
            if not orphaned:
                alive += 1
            elif _remove(group):
                with self._lock:
                    self._removed.append(group.id.hex())
        with self._lock:
            self._live_groups = alive
        return answered


def _actor_state(actor_id: str) -> str | None:
    """``"alive"``, ``"dying"`` (dead per the GCS's actor table, its worker process not yet
    reported gone: ``ray.kill`` marks the actor dead first), ``"gone"``, or None when the GCS
    cannot tell. An id the actor table no longer holds was a dead actor's; a dead actor whose
    process the worker table cannot tell of counts as dying.

    The GCS's actor and worker tables are read directly (what ``ray.util.state`` serves
    through the dashboard): the dashboard starts seconds after the cluster and answers slowly
    on loaded cores, and a janitor that cannot tell keeps a dead trial's group reserved, which
    froze sweeps (issue 22).
    """
    from ray._private import state
    from ray._raylet import ActorID, WorkerID
    from ray.core.generated import gcs_pb2

    try:
        accessor = state.state._connect_and_get_accessor()
        raw = accessor.get_actor_info(ActorID.from_hex(actor_id))
    except Exception:
        return None
    if raw is None:
        return "gone"
    actor = gcs_pb2.ActorTableData.FromString(raw)
    if actor.state != gcs_pb2.ActorTableData.DEAD:
        return "alive"
    if not actor.address.worker_id:
        return "gone"  # never had a process
    try:
        raw = accessor.get_worker_info(WorkerID(actor.address.worker_id))
    except Exception:
        return "dying"
    if raw is None:
        return "gone"
    return "dying" if gcs_pb2.WorkerTableData.FromString(raw).is_alive else "gone"


def actor_groups(job_id: str) -> list[tuple[Any, bool]]:
    """Placement groups of job ``job_id`` (hex) made by an actor (a Train controller, for a
    sweep), neither removed nor detached, per the GCS's placement-group table: each with
    whether its creator is dead (an orphan). A controller killed with its trial (Tune's stop,
    the stall watchdog, the end of a sweep) leaves its group behind whether it held resources
    or still waited for them (a pending group is placed later and then holds them), as Ray
    ties a group's life to the job, not to its creator."""
    from ray._private import state
    from ray._raylet import PlacementGroupID
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    table = gcs_pb2.PlacementGroupTableData
    found = []
    for raw in state.state._connect_and_get_accessor().get_placement_group_table():
        data = table.FromString(raw)
        if (
            data.state == table.REMOVED
            or data.is_detached
            # A driver's groups (Tune's own) name the nil actor, which the GCS calls dead.
            or not data.creator_actor_id
            or ray.ActorID(data.creator_actor_id).is_nil()
            or data.creator_job_id.hex() != job_id
        ):
            continue
        group = PlacementGroup(PlacementGroupID(data.placement_group_id))
        # The table's own flag can stay False for a controller that ray.kill ended (seen with
        # the stall watchdog's kill): the actor table is asked too.
        dead = data.creator_actor_dead or _actor_state(data.creator_actor_id.hex()) in (
            "dying",
            "gone",
        )
        found.append((group, bool(dead)))
    return found


def _remove(placement_group: Any) -> bool:
    """Remove a placement group unless it is gone already; returns whether this removed it."""
    from ray.util.placement_group import placement_group_table, remove_placement_group

    if placement_group_table(placement_group).get("state", "REMOVED") == "REMOVED":
        return False
    remove_placement_group(placement_group)
    logger.warning(
        "removed placement group %s: its creator (a Train controller) died", placement_group.id
    )
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
        self._trial: str | None = None

    def after_controller_start(self, train_run_context: Any) -> None:
        self._controller_id = ray.get_runtime_context().get_actor_id()
        self._janitor = ray.get_actor(self.janitor_name)
        self._trial = train_run_context.run_config.name

    def before_worker_group_start(self, worker_group_context: Any) -> None:
        bundles = [dict(worker_group_context.resources_per_worker)] * int(
            worker_group_context.num_workers
        )
        # Waited for: the janitor then knows this controller before its group exists.
        ray.get(self._janitor.waiting.remote(self._controller_id, self._trial, bundles))

    def after_worker_group_start(self, worker_group: Any) -> None:
        state = worker_group.get_worker_group_state()
        group = state.placement_group_handle.placement_group
        ray.get(self._janitor.register.remote(self._controller_id, group, self._trial))

    async def before_controller_shutdown(self) -> None:
        self._release()

    def before_controller_abort(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._janitor is not None:
            self._janitor.release.remote(self._controller_id)


# ----------------------------------------------------------------------------- the watch


def _bundle_text(bundles: list[dict[str, float]]) -> str:
    """``[{"CPU": 1.0}, {"CPU": 1.0}]`` -> ``2 x {CPU: 1}``."""

    def one(bundle: dict[str, float]) -> str:
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items())) + "}"

    if not bundles:
        return "nothing"
    if all(b == bundles[0] for b in bundles):
        return f"{len(bundles)} x {one(bundles[0])}"
    return " + ".join(one(b) for b in bundles)


def describe_reservations(
    view: dict[str, Any],
    groups: dict[str, dict[str, Any]],
    total: dict[str, float],
    free: dict[str, float],
) -> str:
    """Who holds the cluster: ``view`` is ``PlacementGroupJanitor.view()``, ``groups`` Ray's
    ``placement_group_table()``, ``total``/``free`` ``ray.cluster_resources()`` /
    ``ray.available_resources()``. One sentence a user can act on."""
    kinds = [k for k in ("CPU", "GPU") if total.get(k)]
    capacity = ", ".join(f"{free.get(k, 0.0):g} of {total[k]:g} {k} free" for k in kinds)
    held_by = {h["placement_group"]: h["trial"] for h in view.get("holding", [])}
    parts = []
    for group_id, group in groups.items():
        if group.get("state") not in ("CREATED", "RESCHEDULING"):
            continue
        bundles = [dict(b) for b in (group.get("bundles") or {}).values()]
        # Tune's own group for each trial holds one byte of memory: it holds no CPU or GPU.
        if not any(b.get(k) for b in bundles for k in ("CPU", "GPU")):
            continue
        if group_id in held_by:
            parts.append(f"trial {held_by[group_id]} ({_bundle_text(bundles)})")
        else:
            parts.append(
                f"placement group {group_id[:12]} ({_bundle_text(bundles)}) of no running "
                "trial of this sweep (another job, or a trial that died without releasing it)"
            )
    held = "; ".join(parts) if parts else "no placement group (ordinary tasks or actors)"
    return f"the cluster has {capacity or 'no CPU or GPU'}; reserved by: {held}"


class ReservationWatch:
    """Driver-side watch (a thread, ``start``/``stop``) of trials whose worker group waits for
    the cluster: once one has waited ``warn_after_s`` it says on the console what it needs and
    who holds the cluster (``describe_reservations``), again every ``repeat_s``; once one has
    waited ``timeout_s`` (``resources.schedule_timeout_s``) it records ``error`` and interrupts
    the main thread as Ctrl-C does, so that Tune ends the sweep with its state saved (a
    ``--resume`` continues it) instead of waiting forever.

    ``janitor``: the sweep's ``PlacementGroupJanitor`` handle; ``say``: prints one line.
    """

    def __init__(
        self,
        janitor: Any,
        timeout_s: float,
        say: Any,
        *,
        warn_after_s: float | None = None,
        repeat_s: float = 300.0,
        check_every_s: float = 5.0,
    ) -> None:
        self.janitor = janitor
        self.timeout_s = timeout_s
        self.warn_after_s = min(60.0, timeout_s / 2) if warn_after_s is None else warn_after_s
        self.repeat_s = repeat_s
        self.check_every_s = check_every_s
        self.say = say
        self.error: str | None = None
        self._warned: dict[str, float] = {}  # trial -> its wait when last reported (s)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="reservation-watch", daemon=True)

    def start(self) -> ReservationWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.check_every_s):
            try:
                if self.check():
                    return
            except Exception:  # a slow or restarting GCS: the next check retries
                logger.warning("reservation watch: check failed", exc_info=True)

    def check(self) -> bool:
        """One look; returns True once the sweep was told to end."""
        from ray.util.placement_group import placement_group_table

        view = ray.get(self.janitor.view.remote(), timeout=30)
        longest = max(view["waiting"], key=lambda w: w["waited_s"], default=None)
        if longest is None:
            self._warned.clear()
            return False
        trial, waited = longest["trial"], longest["waited_s"]
        if waited < self.warn_after_s:
            return False
        last = self._warned.get(trial)
        if waited < self.timeout_s and last is not None and waited - last < self.repeat_s:
            return False
        self._warned[trial] = waited
        held = describe_reservations(
            view, placement_group_table(), ray.cluster_resources(), ray.available_resources()
        )
        need = _bundle_text(longest["bundles"])
        if waited < self.timeout_s:
            self.say(
                f"warning: trial {trial} has waited {waited:.0f} s for its worker group "
                f"({need}); {held}. The sweep ends after {self.timeout_s:g} s of waiting "
                "(resources.schedule_timeout_s)."
            )
            return False
        with self._lock:
            if self._stop.is_set():
                return True
            self.error = (
                f"trial {trial} could not start for {waited:.0f} s "
                f"(resources.schedule_timeout_s={self.timeout_s:g}): it needs {need}; {held}. "
                "Free those resources (`ray status`, `ray list placement-groups`) or raise "
                "resources.schedule_timeout_s, then run the same command with --resume."
            )
            self.say(f"error: {self.error}")
            _thread.interrupt_main(signal.SIGINT)
        return True
