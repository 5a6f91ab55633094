"""The ipam.json checkpoint: upstream's exact format, atomic writes, restart with cooldown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.ipamd.checkpoint import COOLDOWN_KEY
from vpccni.ipamd.checkpoint import CheckpointEntry
from vpccni.ipamd.checkpoint import CheckpointError
from vpccni.ipamd.checkpoint import CheckpointState
from vpccni.ipamd.checkpoint import CooldownEntry
from vpccni.ipamd.checkpoint import JsonCheckpointer
from vpccni.ipamd.checkpoint import PodMeta
from vpccni.ipamd.checkpoint import checkpoint_path
from vpccni.ipamd.datastore import DataStore
from vpccni.ipamd.datastore import DatastoreError
from vpccni.ipamd.datastore import NotRestoredError

T0 = 1_690_000_000.0
WEB = AttachmentKey("aws-cni", "abc123", "eth0")

# What upstream aws-node v1.23 writes (compact, trailing newline, Go field order).
UPSTREAM_FILE = (
    '{"version":"vpc-cni-ipam/1","allocations":['
    '{"networkName":"aws-cni","containerID":"abc123","ifName":"eth0","ipv4":"10.0.0.11",'
    '"allocationTimestamp":1690000000123456789,'
    '"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-0","interfacesCount":1}},'
    '{"networkName":"aws-cni","containerID":"def456","ifName":"eth0","ipv4":"10.0.0.12",'
    '"allocationTimestamp":1690000000000000000,"metadata":{}}]}\n'
)


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store(path: Path, clock: FakeClock) -> DataStore:
    """A node with ENIs and CIDRs known, not yet restored (as after node init's adopt)."""
    ds = DataStore(JsonCheckpointer(str(path)), clock=clock)
    ds.add_eni("eni-0", 0, is_primary=True)
    for i in range(10, 14):
        ds.add_cidr("eni-0", f"10.0.0.{i}/32")
    return ds


def fresh_store(path: Path, clock: FakeClock) -> DataStore:
    """A fresh node: no checkpoint yet, restored with an empty state as the daemon does."""
    ds = store(path, clock)
    assert ds.restore(CheckpointState()) == []
    return ds


# -- format ------------------------------------------------------------------------------------


def test_written_file_is_byte_for_byte_upstreams_shape(tmp_path: Path) -> None:
    cp = JsonCheckpointer(str(tmp_path / "ipam.json"))
    cp.save(
        CheckpointState(
            (
                CheckpointEntry(
                    WEB, "10.0.0.11", 1690000000123456789, PodMeta("default", "web-0", 1)
                ),
                CheckpointEntry(
                    AttachmentKey("aws-cni", "def456", "eth0"), "10.0.0.12", 1690000000000000000
                ),
            )
        )
    )
    assert (tmp_path / "ipam.json").read_text() == UPSTREAM_FILE


def test_ipv6_entries_use_the_ipv6_key(tmp_path: Path) -> None:
    cp = JsonCheckpointer(str(tmp_path / "ipam.json"))
    cp.save(CheckpointState((CheckpointEntry(WEB, "2001:db8::5", 1),)))
    (entry,) = json.loads((tmp_path / "ipam.json").read_text())["allocations"]
    assert entry["ipv6"] == "2001:db8::5"
    assert "ipv4" not in entry


def test_upstream_file_loads(tmp_path: Path) -> None:
    (tmp_path / "ipam.json").write_text(UPSTREAM_FILE)
    state = JsonCheckpointer(str(tmp_path / "ipam.json")).load()
    assert state is not None
    assert state.cooldown == ()
    first, second = state.allocations
    assert first == CheckpointEntry(
        WEB, "10.0.0.11", 1690000000123456789, PodMeta("default", "web-0", 1)
    )
    assert second.meta == PodMeta()


def test_go_null_allocations_load_as_empty(tmp_path: Path) -> None:
    (tmp_path / "ipam.json").write_text('{"version":"vpc-cni-ipam/1","allocations":null}\n')
    assert JsonCheckpointer(str(tmp_path / "ipam.json")).load() == CheckpointState()


def go_decodes(doc: dict[str, object]) -> bool:
    """What upstream's json.Unmarshal into CheckpointData needs: known keys with the right
    JSON types; unknown keys are ignored."""
    if not isinstance(doc.get("version"), str) or not isinstance(doc.get("allocations"), list):
        return False
    fields = {
        "networkName": str,
        "containerID": str,
        "ifName": str,
        "ipv4": str,
        "ipv6": str,
        "allocationTimestamp": int,
        "metadata": dict,
    }
    meta_fields = {"k8sPodNamespace": str, "k8sPodName": str, "interfacesCount": int}
    for entry in doc["allocations"]:  # type: ignore[attr-defined]
        for name, kind in fields.items():
            if name in entry and not isinstance(entry[name], kind):
                return False
        for name, kind in meta_fields.items():
            if name in entry["metadata"] and not isinstance(entry["metadata"][name], kind):
                return False
        if not set(fields) >= set(entry) - {"ipv4", "ipv6"}:
            return False
    return set(doc) <= {"version", "allocations", COOLDOWN_KEY}


def test_our_file_with_cooldown_stays_upstream_readable(tmp_path: Path) -> None:
    clock = FakeClock()
    ds = fresh_store(tmp_path / "ipam.json", clock)
    ds.assign(WEB, PodMeta("default", "web-0"))
    ds.assign(AttachmentKey("aws-cni", "old", "eth0"))
    ds.unassign(AttachmentKey("aws-cni", "old", "eth0"))
    text = (tmp_path / "ipam.json").read_text()
    doc = json.loads(text)
    assert text.endswith("}\n")
    assert "\n" not in text[:-1]
    assert list(doc) == ["version", "allocations", COOLDOWN_KEY]
    assert doc[COOLDOWN_KEY] == [{"ipv4": "10.0.0.11", "unassignedTimestamp": int(T0 * 1e9)}]
    assert doc["allocations"] == [
        {
            "networkName": "aws-cni",
            "containerID": "abc123",
            "ifName": "eth0",
            "ipv4": "10.0.0.10",
            "allocationTimestamp": int(T0 * 1e9),
            "metadata": {"k8sPodNamespace": "default", "k8sPodName": "web-0"},
        }
    ]
    assert go_decodes(doc)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"version":"vpc-cni-ipam/2","allocations":[]}', "'vpc-cni-ipam/2' is not supported"),
        ('{"allocations":[]}', "None is not supported"),
        ("{not json", "not valid JSON"),
        ('{"version":"vpc-cni-ipam/1","allocations":[{"ipv4":"x"}]}', "allocations[0]"),
        (
            '{"version":"vpc-cni-ipam/1","allocations":[{"ipv4":"10.0.0.1",'
            '"allocationTimestamp":"now"}]}',
            "allocationTimestamp",
        ),
        ('{"version":"vpc-cni-ipam/1","allocations":[{"networkName":"n"}]}', "exactly one of"),
    ],
)
def test_unreadable_file_is_a_hard_error_naming_the_file(
    tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "ipam.json"
    path.write_text(content)
    with pytest.raises(CheckpointError) as info:
        JsonCheckpointer(str(path)).load()
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_file_is_a_fresh_node(tmp_path: Path) -> None:
    assert JsonCheckpointer(str(tmp_path / "ipam.json")).load() is None


def test_per_network_card_paths() -> None:
    assert checkpoint_path("/var/run/aws-node/ipam.json", 0) == "/var/run/aws-node/ipam.json"
    assert checkpoint_path("/var/run/aws-node/ipam.json", 1) == "/var/run/aws-node/ipam-nic-1.json"
    assert checkpoint_path("/state/ipam", 2) == "/state/ipam-nic-2.json"


# -- atomic writes -----------------------------------------------------------------------------


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ipam.json"
    path.write_text(UPSTREAM_FILE)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(CheckpointError, match="No space left"):
        JsonCheckpointer(str(path)).save(CheckpointState())
    assert path.read_text() == UPSTREAM_FILE
    assert os.listdir(tmp_path) == ["ipam.json"]


def test_datastore_refuses_assignment_it_cannot_persist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    ds = fresh_store(tmp_path / "ipam.json", clock)
    written = (tmp_path / "ipam.json").read_text()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(CheckpointError, match="No space left"):
        ds.assign(WEB)
    assert ds.lookup(WEB) is None
    assert (tmp_path / "ipam.json").read_text() == written


def test_nothing_is_written_before_restore(tmp_path: Path) -> None:
    """The review bug: a removal before restore() used to replace the checkpoint, and the
    running pods' allocations in it, with the (empty) state in memory."""
    path = tmp_path / "ipam.json"
    path.write_text(UPSTREAM_FILE)
    ds = store(path, FakeClock())
    ds.add_cidr("eni-0", "10.0.0.99/32")
    with pytest.raises(NotRestoredError, match="before restore"):
        ds.remove_cidr("eni-0", "10.0.0.99/32")
    with pytest.raises(NotRestoredError):
        ds.remove_eni("eni-0")
    with pytest.raises(NotRestoredError):
        ds.assign(WEB)
    assert path.read_text() == UPSTREAM_FILE  # untouched
    # Refused changes were undone: the store is as before.
    assert [e.id for e in ds.enis()] == ["eni-0"]
    assert "10.0.0.99/32" in [c.cidr for c in ds.enis()[0].cidrs]
    assert ds.lookup(WEB) is None
    # After restore the pods are there and changes are saved again.
    state = JsonCheckpointer(str(path)).load()
    assert state is not None
    assert ds.restore(state) == []
    ds.remove_cidr("eni-0", "10.0.0.99/32")
    on_disk = JsonCheckpointer(str(path)).load()
    assert on_disk is not None
    assert {e.address for e in on_disk.allocations} == {"10.0.0.11", "10.0.0.12"}


def test_a_fresh_node_is_restored_with_an_empty_state(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    ds = store(path, FakeClock())
    before = ds.restored
    ds.restore(CheckpointState())
    assert (before, ds.restored) == (False, True)
    assert JsonCheckpointer(str(path)).load() == CheckpointState()
    ds.assign(WEB)
    assert ds.lookup(WEB) is not None


def test_writes_leave_only_the_checkpoint(tmp_path: Path) -> None:
    ds = fresh_store(tmp_path / "ipam.json", FakeClock())
    for n in range(3):
        ds.assign(AttachmentKey("aws-cni", f"c{n}", "eth0"))
    assert os.listdir(tmp_path) == ["ipam.json"]


# -- restart -----------------------------------------------------------------------------------


def test_restart_restores_assignments_and_cooldown(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "ipam.json"
    before = fresh_store(path, clock)
    before.assign(WEB, PodMeta("default", "web-0"))
    gone = AttachmentKey("aws-cni", "gone", "eth0")
    before.assign(gone)
    before.unassign(gone)  # 10.0.0.11 cooling

    clock.now += 5
    after = store(path, clock)
    state = JsonCheckpointer(str(path)).load()
    assert state is not None
    assert after.restore(state) == []
    assert after.assignments() == before.assignments()
    assert after.stats() == before.stats()
    # The cooling address is not handed out after the restart (upstream would).
    assert after.assign(AttachmentKey("aws-cni", "new", "eth0")).address == "10.0.0.12"
    clock.now += 30
    assert after.assign(AttachmentKey("aws-cni", "new2", "eth0")).address == "10.0.0.11"


def test_switch_from_upstream_keeps_running_pods(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    path.write_text(UPSTREAM_FILE)
    clock = FakeClock()
    ds = store(path, clock)
    state = JsonCheckpointer(str(path)).load()
    assert state is not None
    assert ds.restore(state) == []
    web = ds.lookup(WEB)
    assert web is not None
    assert (web.address, web.meta.name, web.assigned_ns) == (
        "10.0.0.11",
        "web-0",
        1690000000123456789,
    )
    assert ds.assign(AttachmentKey("aws-cni", "new", "eth0")).address == "10.0.0.10"
    # ... and back: upstream's reader sees the same pods plus the new one.
    doc = json.loads(path.read_text())
    assert go_decodes(doc)
    assert sorted(e["ipv4"] for e in doc["allocations"]) == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]


def test_entries_outside_every_cidr_are_dropped_and_reported(tmp_path: Path) -> None:
    clock = FakeClock()
    ds = store(tmp_path / "ipam.json", clock)
    stale = CheckpointEntry(AttachmentKey("aws-cni", "stale", "eth0"), "10.9.9.9", 1)
    kept = CheckpointEntry(WEB, "10.0.0.13", 2)
    assert ds.restore(CheckpointState((stale, kept), (CooldownEntry("10.9.9.8", 1),))) == [stale]
    assert [a.key for a in ds.assignments()] == [WEB]
    on_disk = JsonCheckpointer(str(tmp_path / "ipam.json")).load()
    assert on_disk == CheckpointState((kept,))  # rewritten without the stale entry


@pytest.mark.parametrize(
    "entries",
    [
        (
            CheckpointEntry(AttachmentKey("aws-cni", "a", "eth0"), "10.0.0.10", 1),
            CheckpointEntry(AttachmentKey("aws-cni", "b", "eth0"), "10.0.0.10", 2),
        ),
        (
            CheckpointEntry(WEB, "10.0.0.10", 1),
            CheckpointEntry(WEB, "10.0.0.11", 2),
        ),
    ],
)
def test_duplicates_are_an_error_and_change_nothing(
    tmp_path: Path, entries: tuple[CheckpointEntry, ...]
) -> None:
    ds = store(tmp_path / "ipam.json", FakeClock())
    with pytest.raises(DatastoreError):
        ds.restore(CheckpointState(entries))
    assert ds.assignments() == []


def test_expired_cooldown_entries_do_not_block(tmp_path: Path) -> None:
    clock = FakeClock()
    ds = store(tmp_path / "ipam.json", clock)
    ds.restore(CheckpointState((), (CooldownEntry("10.0.0.10", int((T0 - 60) * 1e9)),)))
    assert ds.stats().cooldown_ips == 0
    assert ds.assign(WEB).address == "10.0.0.10"


def test_restored_cooldown_explains_a_failure(tmp_path: Path) -> None:
    clock = FakeClock()
    ds = DataStore(JsonCheckpointer(str(tmp_path / "ipam.json")), clock=clock)
    ds.add_eni("eni-0", 0, is_primary=True)
    ds.add_cidr("eni-0", "10.0.0.10/32")
    ds.restore(CheckpointState((), (CooldownEntry("10.0.0.10", int((T0 - 10) * 1e9)),)))
    with pytest.raises(IpamError) as info:
        ds.assign(WEB)
    assert info.value.reason is FailureReason.COOLDOWN


def test_start_removes_temp_files_a_killed_daemon_left(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    cp = JsonCheckpointer(str(path))
    cp.save(CheckpointState())
    stale = [tmp_path / "ipam.json.tmpab12cd", tmp_path / "ipam.json.tmp9z"]
    for leftover in stale:
        leftover.write_text('{"version":"vpc-cni-ipam/1","allocations":[]}')
    other = tmp_path / "unrelated.tmp1"
    other.write_text("keep me")
    cp.remove_stale_temp_files()
    assert cp.load() == CheckpointState()
    assert not any(p.exists() for p in stale)
    assert other.exists()
