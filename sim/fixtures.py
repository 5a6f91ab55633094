"""pytest fixtures that run the local VPC simulator in the test process.

Use from any test package::

    pytest_plugins = ["vpccni.sim.fixtures"]      # in a conftest.py

    @pytest.mark.netns
    @pytest.mark.sim
    def test_something(sim):                     # one simulator per test module
        ec2 = sim.ec2_client()
        sim.node_exec("node0", ["vpccni-ipamd", "--version"])

Override ``sim_config`` in a module (or conftest) to change the shape::

    @pytest.fixture(scope="module")
    def sim_config():
        return {"nodes": 1, "instance_type": "t3.medium", "ipv6": True}

``sim_factory`` (function scope) starts extra, independent simulators and stops them at the
end of the test. In-process rather than through the daemon: same ``Simulator`` code path,
faster, and the test can reach the emulator (``sim.emulator.faults``) directly.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import pytest

from vpccni.sim.daemon import Node
from vpccni.sim.daemon import SimConfig
from vpccni.sim.daemon import Simulator
from vpccni.sim.daemon import merged_node_env

DEFAULT_SIM_CONFIG: dict[str, Any] = {"nodes": 2, "instance_type": "m5.large"}


class SimHandle:
    """What a test gets: the running simulator and helpers to act as a node."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    # -- the pieces ----------------------------------------------------------------------

    @property
    def emulator(self) -> Any:
        """The in-process ``Ec2Emulator`` (``.faults``, ``.backend``, ``.lock``)."""
        return self.simulator.emulator

    @property
    def fabric(self) -> Any:
        return self.simulator.fabric

    @property
    def region(self) -> str:
        return self.simulator.config.region

    @property
    def prefix(self) -> str:
        return self.simulator.config.prefix

    @property
    def ec2_endpoint(self) -> str:
        """The EC2 endpoint for the test process (127.0.0.1)."""
        return str(self.emulator.endpoint_url)

    @property
    def ec2_endpoint_vpc(self) -> str:
        """The EC2 endpoint as seen from inside a node."""
        return self.simulator.vpc_ec2_url

    @property
    def nodes(self) -> list[Node]:
        return self.simulator.nodes

    @property
    def topology(self) -> Any:
        return self.simulator.topology

    def node(self, name: str) -> Node:
        return self.simulator.node(name)

    def ec2_client(self, **kwargs: Any) -> Any:
        """boto3 EC2 client on the host endpoint; kwargs go to ``boto3.client``."""
        if not kwargs:
            return self.simulator.ec2_client()
        import boto3  # noqa: PLC0415 - only for a custom client

        params: dict[str, Any] = {
            "endpoint_url": self.ec2_endpoint,
            "region_name": self.region,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        params.update(kwargs)
        return boto3.client("ec2", **params)

    def imds_url(self, name: str) -> str:
        """That node's metadata endpoint on 127.0.0.1 (for the test process)."""
        return self.node(name).imds_host_url

    def status(self) -> dict[str, Any]:
        return self.simulator.status()

    def wait_synced(self, timeout: float = 10.0) -> None:
        """Block until the fabric reflects every EC2 change made before this call."""
        if not self.simulator.wait_synced(timeout):
            raise TimeoutError(f"fabric not in sync after {timeout} s")

    # -- acting as a node ------------------------------------------------------------------

    def node_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment of a process on a node: in-VPC endpoints, region, fake credentials."""
        env = merged_node_env(self.simulator.node_env())
        env.update(extra or {})
        return env

    def node_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.node(name).namespace, *argv]

    def node_exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        check: bool = False,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside node ``name``, as ``vpccni sim exec`` does; output captured."""
        kwargs.setdefault("capture_output", True)
        return subprocess.run(
            self.node_argv(name, argv),
            env=self.node_env(env),
            timeout=timeout,
            check=check,
            text=True,
            **kwargs,
        )

    def node_popen(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start a long-running process (ipamd) inside node ``name``; the caller stops it."""
        return subprocess.Popen(self.node_argv(name, argv), env=self.node_env(env), **kw)


def netns_available() -> str | None:
    """Why simulator tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


def unique_prefix() -> str:
    # Several people test on one machine: a random prefix keeps namespaces apart.
    return "vt" + secrets.token_hex(3)


@contextlib.contextmanager
def running_simulator(**config: Any) -> Iterator[SimHandle]:
    """Start an in-process simulator, yield its handle, always stop it (also on failure)."""
    config.setdefault("prefix", unique_prefix())
    simulator = Simulator(SimConfig(**config))
    simulator.start()
    try:
        yield SimHandle(simulator)
    finally:
        simulator.stop()


@pytest.fixture(scope="module")
def sim_config() -> dict[str, Any]:
    """Keyword arguments of ``SimConfig`` (minus ``prefix``); override to reshape the VPC."""
    return dict(DEFAULT_SIM_CONFIG)


@pytest.fixture(scope="module")
def sim(sim_config: dict[str, Any]) -> Iterator[SimHandle]:
    """A running simulator shared by the tests of one module."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    with running_simulator(**sim_config) as handle:
        yield handle


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., SimHandle]]:
    """Start extra simulators inside one test: ``sim_factory(nodes=1)``; all stopped after."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:

        def start(**config: Any) -> SimHandle:
            return stack.enter_context(running_simulator(**config))

        yield start
