"""Group commit: concurrent changes share checkpoint writes, and no reply runs ahead of the file.

A gated checkpointer holds its first write until every thread's change is in memory, which
makes "many changes, one write" deterministic instead of a matter of timing; the deadlines
below only stop a hung test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from vpccni.core.ipam import AttachmentKey
from vpccni.ipamd.checkpoint import CheckpointEntry
from vpccni.ipamd.checkpoint import CheckpointState
from vpccni.ipamd.checkpoint import JsonCheckpointer
from vpccni.ipamd.datastore import Assignment
from vpccni.ipamd.datastore import DataStore

T0 = 1_700_000_000.0
THREADS = 16
HANG = 30.0


def key(n: int) -> AttachmentKey:
    return AttachmentKey("aws-cni", f"container-{n}", "eth0")


def wait_until(what: str, probe: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"hung waiting for {what}")
        time.sleep(0.005)


class GatedCheckpointer(JsonCheckpointer):
    """A real checkpoint file whose armed write waits for ``gate`` and then fails if
    ``fail_armed``.  Also checks that writes never overlap."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.armed = False
        self.fail_armed = False
        self.blocked = threading.Event()
        self.saves = 0
        self._busy = threading.Lock()

    def save(self, state: CheckpointState) -> None:
        if not self._busy.acquire(blocking=False):
            raise AssertionError("two checkpoint writes at once")
        try:
            self.saves += 1
            if self.armed:
                self.armed = False
                self.blocked.set()
                if not self.gate.wait(HANG):
                    raise AssertionError("gate never opened")
                if self.fail_armed:
                    raise OSError(28, "No space left on device")
            super().save(state)
        finally:
            self._busy.release()

    def on_disk(self) -> CheckpointState:
        state = self.load()
        assert state is not None
        return state


def make_store(tmp_path: Path, addresses: int = 40) -> tuple[DataStore, GatedCheckpointer]:
    cp = GatedCheckpointer(str(tmp_path / "ipam.json"))
    ds = DataStore(cp, clock=lambda: T0, cooldown_period=0)
    ds.add_eni("eni-0", 0, is_primary=True)
    for i in range(addresses):
        ds.add_cidr("eni-0", f"10.0.0.{10 + i}/32")
    ds.restore(CheckpointState())
    cp.saves = ds.writes = 0
    return ds, cp


class Requests:
    """THREADS callers started together; ``join()`` waits for all (failing a hung one)."""

    def __init__(self, target: Callable[[int], object]) -> None:
        self.results: dict[int, object] = {}
        self.errors: dict[int, BaseException] = {}
        start = threading.Barrier(THREADS)

        def run(n: int) -> None:
            start.wait()
            try:
                self.results[n] = target(n)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertions
                self.errors[n] = exc

        self._threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
        for t in self._threads:
            t.start()

    def join(self) -> None:
        for t in self._threads:
            t.join(HANG)
            assert not t.is_alive(), "a request never returned"


def entries(state: CheckpointState) -> dict[AttachmentKey, str]:
    return {e.key: e.address for e in state.allocations}


def test_sixteen_concurrent_assigns_share_writes_and_every_reply_is_on_disk(
    tmp_path: Path,
) -> None:
    ds, cp = make_store(tmp_path)
    cp.armed = True
    seen_on_disk: dict[int, bool] = {}

    def assign(n: int) -> Assignment:
        got = ds.assign(key(n))
        # The reply may only exist once a checkpoint holding it is durable: read the file
        # the moment the call returns.
        seen_on_disk[n] = entries(cp.on_disk()).get(key(n)) == got.address
        return got

    requests = Requests(assign)
    # The first write is held until every change is in memory: the datastore lock is free
    # while a write is under way (stats() would block otherwise).
    wait_until("16 assignments in memory", lambda: ds.stats().assigned_ips == THREADS)
    cp.gate.set()
    requests.join()

    assert requests.errors == {}
    assert seen_on_disk == dict.fromkeys(range(THREADS), True)
    results = {n: r for n, r in requests.results.items() if isinstance(r, Assignment)}
    assert len({r.address for r in results.values()}) == THREADS
    # One write held back, then one covering everyone who arrived meanwhile.
    assert cp.saves <= 2
    assert ds.writes == cp.saves
    assert entries(cp.on_disk()) == {key(n): r.address for n, r in results.items()}


def test_assigns_and_releases_mixed_end_in_the_file(tmp_path: Path) -> None:
    ds, cp = make_store(tmp_path)
    for n in range(THREADS):
        ds.assign(key(n))

    def churn(n: int) -> None:
        # Odd threads release their address, even ones take a second one.
        if n % 2:
            ds.unassign(key(n))
        else:
            ds.assign(key(100 + n))

    cp.armed = True
    requests = Requests(churn)
    wait_until("the churn in memory", lambda: ds.stats().assigned_ips == THREADS)
    cp.gate.set()
    requests.join()
    assert requests.errors == {}

    expected = {a.key: a.address for a in ds.assignments()}
    assert len(expected) == THREADS
    assert entries(cp.on_disk()) == expected
    assert {k.container_id for k in expected} == {
        f"container-{n}" for n in range(0, THREADS, 2)
    } | {f"container-{100 + n}" for n in range(0, THREADS, 2)}


def test_failed_write_fails_every_waiting_caller_and_rolls_back(tmp_path: Path) -> None:
    ds, cp = make_store(tmp_path)
    kept = ds.assign(key(999))  # durable before the failure: must survive it
    before_file = (tmp_path / "ipam.json").read_text()
    cp.armed = True
    cp.fail_armed = True

    requests = Requests(lambda n: ds.assign(key(n)))
    wait_until("16 assignments in memory", lambda: ds.stats().assigned_ips == THREADS + 1)
    cp.gate.set()
    requests.join()

    # Every caller whose change was not durable is told, with the write's error.
    assert requests.results == {}
    assert sorted(requests.errors) == list(range(THREADS))
    assert all(isinstance(e, OSError) and e.errno == 28 for e in requests.errors.values())
    # The store is back at the last durable state, which is what the file holds.
    assert ds.assignments() == [kept]
    assert ds.stats().assigned_ips == 1
    assert (tmp_path / "ipam.json").read_text() == before_file
    # ... and consistent: the same addresses are handed out again, and saved.
    again = ds.assign(key(0))
    assert again.address != kept.address
    assert entries(cp.on_disk()) == {key(999): kept.address, key(0): again.address}


def test_failed_write_undoes_releases_too(tmp_path: Path) -> None:
    ds, cp = make_store(tmp_path)
    held = {n: ds.assign(key(n)) for n in range(THREADS)}
    cp.armed = True
    cp.fail_armed = True

    requests = Requests(lambda n: ds.unassign(key(n)))
    wait_until("16 releases in memory", lambda: ds.stats().assigned_ips == 0)
    cp.gate.set()
    requests.join()

    assert sorted(requests.errors) == list(range(THREADS))
    assert {a.key: a.address for a in ds.assignments()} == {key(n): held[n].address for n in held}
    assert entries(cp.on_disk()) == {key(n): held[n].address for n in held}


def test_a_retried_add_is_not_answered_before_its_address_is_durable(tmp_path: Path) -> None:
    """A retry finds the address in memory; if the write that would have saved it fails,
    the retry must fail too instead of returning an address the file never held."""
    ds, cp = make_store(tmp_path)
    cp.armed = True
    cp.fail_armed = True
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            outcome["first"] = ds.assign(key(1))
        except OSError as exc:
            outcome["first"] = exc

    def retry() -> None:
        try:
            outcome["retry"] = ds.assign(key(1))
        except OSError as exc:
            outcome["retry"] = exc

    t1 = threading.Thread(target=first)
    t1.start()
    cp.blocked.wait(HANG)  # the first write is under way, its change in memory
    assert ds.lookup(key(1)) is not None
    t2 = threading.Thread(target=retry)
    t2.start()
    wait_until("the retry to wait for the write", lambda: len(ds._tickets) == 2)
    cp.gate.set()
    t1.join(HANG)
    t2.join(HANG)
    assert isinstance(outcome["first"], OSError)
    assert isinstance(outcome["retry"], OSError)
    assert ds.lookup(key(1)) is None


def test_nothing_pending_means_no_write(tmp_path: Path) -> None:
    ds, cp = make_store(tmp_path)
    got = ds.assign(key(1))
    saves = cp.saves
    assert ds.assign(key(1)) == got  # retry: already durable
    assert ds.unassign(key(2)) is None  # unknown key
    assert cp.saves == saves


def test_restore_is_a_write_and_entries_survive(tmp_path: Path) -> None:
    cp = GatedCheckpointer(str(tmp_path / "ipam.json"))
    ds = DataStore(cp, clock=lambda: T0)
    ds.add_eni("eni-0", 0, is_primary=True)
    ds.add_cidr("eni-0", "10.0.0.10/32")
    entry = CheckpointEntry(key(1), "10.0.0.10", 5)
    assert ds.restore(CheckpointState((entry,))) == []
    assert cp.on_disk().allocations == (entry,)
