"""``VPCCNI_PROFILE``: a served command writes a cProfile of itself, and changes nothing else."""

from __future__ import annotations

import pstats
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_plugin_server import Node
from tests.support.plugin import fake_conf

pytestmark = pytest.mark.netns


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path, "vzp")
    try:
        yield n
    finally:
        n.close()


def test_a_served_command_writes_its_profile_when_asked(node: Node) -> None:
    node.server()
    conf = fake_conf(node.tmp, "1.0.0")
    pod = node.pod()
    prefix = node.tmp / "profiles" / "add"
    prefix.parent.mkdir()
    add = node.call("ADD", conf, via_server=True, pod=pod, extra={"VPCCNI_PROFILE": str(prefix)})
    assert add.ok, add.stdout + add.stderr
    assert add.result["ips"][0]["address"] == "10.77.0.1/32"
    written = list(prefix.parent.iterdir())
    assert len(written) == 1
    assert written[0].name.startswith("add.")
    stats = pstats.Stats(str(written[0]))
    functions = {name for _file, _line, name in stats.stats}  # type: ignore[attr-defined]
    assert {"main", "run", "add"} <= functions  # cli.main -> dispatch.run -> Runtime.add
    deleted = node.call("DEL", conf, via_server=True, pod=pod)  # no variable: no profile
    assert (deleted.returncode, deleted.stdout) == (0, "")
    assert list(prefix.parent.iterdir()) == written
