"""VPCCNI_PLUGIN_SERVER_SOCKET_PATH: its validation, and the supervisor's restart rules with a
stand-in server (the real one runs in tests/e2e/test_ipamd_plugin_server.py)."""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpccni.ipamd import plugin_server_supervisor as sup
from vpccni.ipamd.config import ConfigError
from vpccni.ipamd.config import IpamdConfig

VAR = "VPCCNI_PLUGIN_SERVER_SOCKET_PATH"


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        IpamdConfig.from_env(env)
    return info.value.problems


# -- configuration ------------------------------------------------------------------------------


def test_unset_serves_where_install_cni_points_launchers_and_empty_starts_none() -> None:
    from vpccni.core.zygote import DEFAULT_SOCKET as LAUNCHER_DEFAULT

    assert IpamdConfig.from_env({}).plugin_server_socket_path == LAUNCHER_DEFAULT
    assert IpamdConfig.from_env({VAR: ""}).plugin_server_socket_path == ""


def test_an_absolute_path_is_taken(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "plugin.sock")  # its directory need not exist yet
    assert IpamdConfig.from_env({VAR: path}).plugin_server_socket_path == path


@pytest.mark.parametrize("value", ["run/plugin.sock", "plugin.sock", "/run/vpccni/"])
def test_a_relative_path_or_a_directory_is_refused(value: str) -> None:
    (problem,) = problems({VAR: value})
    assert problem.startswith(f"{VAR}={value!r}: expected an absolute path"), problem


def test_a_directory_that_cannot_exist_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    value = str(blocker / "sub" / "plugin.sock")
    (problem,) = problems({VAR: value})
    assert problem.startswith(f"{VAR}={value!r}"), problem
    assert f"{blocker} is not a directory" in problem, problem


def test_too_long_for_a_unix_socket_is_refused() -> None:
    value = "/run/" + "x" * 120 + "/plugin.sock"
    (problem,) = problems({VAR: value})
    assert problem.startswith(f"{VAR}="), problem
    assert "107 bytes" in problem, problem


def test_ipamds_own_socket_is_refused() -> None:
    (problem,) = problems({VAR: "/run/a/ipamd.sock", "VPCCNI_IPAMD_SOCKET": "/run/a/ipamd.sock"})
    assert problem.startswith(VAR), problem
    assert "VPCCNI_IPAMD_SOCKET" in problem, problem


def test_reported_with_the_other_problems() -> None:
    found = problems({VAR: "rel.sock", "WARM_IP_TARGET": "abc"})
    assert [p.split("=", 1)[0] for p in found] == ["WARM_IP_TARGET", VAR]


# -- the supervisor, with a stand-in server -----------------------------------------------------

#: Exits at once the way `vpccni plugin-server` does when the socket is taken.
TAKEN = (
    "import sys; print('vpccni plugin-server: error: ' + sys.argv[3] + "
    f"': {sup.ANOTHER_SERVER_MARK}', file=sys.stderr); sys.exit(1)"
)
#: Runs until SIGTERM, as a healthy server does.
RUNS = "import time; time.sleep(60)"


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sup, "BACKOFF_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(sup, "BACKOFF_MAX_SECONDS", 0.2)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[str]:
    """Someone else's server on the socket path."""
    path = str(tmp_path / "plugin.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    yield path
    sock.close()


def supervisor(tmp_path: Path, socket_path: str, script: str) -> sup.PluginServerSupervisor:
    return sup.PluginServerSupervisor(
        socket_path,
        str(tmp_path / "ipamd.sock"),
        str(tmp_path / "log" / sup.LOG_NAME),
        command=[sys.executable, "-c", script],
    )


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.usefixtures("fast_backoff")
def test_a_server_that_is_not_ours_is_warned_about_once_and_retried(
    tmp_path: Path, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=sup.log.name)
    s = supervisor(tmp_path, listener, TAKEN)
    s.start()
    try:
        wait_until("three attempts", lambda: s.restarts >= 3)
    finally:
        s.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "not ours" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # Its stderr went to the server's log, next to where ipamd would log.
    assert sup.ANOTHER_SERVER_MARK in (tmp_path / "log" / sup.LOG_NAME).read_text()


@pytest.mark.usefixtures("fast_backoff")
def test_without_a_log_file_the_socket_is_probed_instead(
    tmp_path: Path, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=sup.log.name)
    s = sup.PluginServerSupervisor(
        listener, str(tmp_path / "ipamd.sock"), None, command=[sys.executable, "-c", TAKEN]
    )
    s.start()
    try:
        wait_until("two attempts", lambda: s.restarts >= 2)
    finally:
        s.stop()
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [
        logging.WARNING
    ], caplog.text


@pytest.mark.usefixtures("fast_backoff")
def test_an_unexpected_exit_is_logged_with_its_status_and_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=sup.log.name)
    s = supervisor(tmp_path, str(tmp_path / "plugin.sock"), "import sys; sys.exit(3)")
    s.start()
    try:
        wait_until("a restart", lambda: s.restarts >= 2)
    finally:
        s.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors, caplog.text
    assert "status 3" in errors[0], errors


def test_stop_terminates_the_server_and_ends_restarts(tmp_path: Path) -> None:
    s = supervisor(tmp_path, str(tmp_path / "plugin.sock"), RUNS)
    s.start()
    wait_until("the server", lambda: s.pid is not None)
    proc = s._proc
    assert proc is not None
    s.stop()
    assert proc.returncode == -15  # SIGTERM, as ipamd's shutdown sends it
    assert s.pid is None
    assert s.restarts == 0


def test_the_server_is_given_both_sockets_and_the_log(tmp_path: Path) -> None:
    s = supervisor(tmp_path, "/run/p.sock", RUNS)
    argv = s.argv()
    assert argv[argv.index("--socket") + 1] == "/run/p.sock"
    assert argv[argv.index("--ipamd-socket") + 1] == str(tmp_path / "ipamd.sock")
    assert argv[argv.index("--log-file") + 1] == str(tmp_path / "log" / sup.LOG_NAME)
    assert sup.log_file_for("/var/log/aws-routed-eni/ipamd.log") == (
        "/var/log/aws-routed-eni/plugin-server.log"
    )
    assert sup.log_file_for("stderr") is None
    assert sup.log_file_for("STDOUT") is None
