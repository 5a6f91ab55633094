"""The native launcher (``vpccni install-cni --launcher native``, cli/native/launcher.c).

Three groups:

* installation: what ``install-cni`` writes (the patched binary and its Python fallback
  ``aws-cni-python``), what it refuses, and what it does without a C compiler;
* the protocol, against a fake plugin server in this process (a unix socket speaking
  protocol v1, docs/plugin-server.md): the native launcher and the Python one must send the
  same request and turn the same replies into the same stdout and exit status;
* the behaviour suite of test_plugin_server.py against a real ``vpccni plugin-server``,
  run once per launcher (the ``node`` fixture below replaces that module's).

Every launcher runs inside a test-made namespace: whenever it falls back, the plugin runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_plugin_server as suite
from tests.support.cnictl import Netns
from tests.support.cnictl import create_netns
from tests.support.cnictl import delete_netns
from tests.support.plugin import VENV_BIN
from vpccni.cli import install_cmd
from vpccni.core.version import SUPPORTED

VPCCNI = str(VENV_BIN / "vpccni")
SOCKET_ENV = "VPCCNI_PLUGIN_SERVER_SOCKET"
ELF = b"\x7fELF"


def install(
    bin_dir: Path, sock: Path | str, launcher: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VPCCNI, "install-cni", "--bin-dir", str(bin_dir), "--names", "aws-cni",
         "--server-socket", str(sock), "--launcher", launcher],
        env={**os.environ, **env}, capture_output=True, text=True, check=False,
    )  # fmt: skip


def config_fields(binary: Path) -> list[bytes]:
    """The settings install-cni wrote into the binary's config area."""
    image = binary.read_bytes()
    at = image.index(install_cmd.CONFIG_MARKER)
    area = image[at + len(install_cmd.CONFIG_MARKER) + 1 : at + install_cmd.CONFIG_SIZE]
    return area.rstrip(b"\0").split(b"\0")


def skip_without_native(result: subprocess.CompletedProcess[str]) -> None:
    if "no native launcher" in result.stderr and install_cmd.c_compiler() is None:
        pytest.skip("no C compiler and no prebuilt native launcher")


def native_or_skip(result: subprocess.CompletedProcess[str]) -> None:
    skip_without_native(result)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def bins(tmp_path: Path) -> Path:
    """A bin dir with the native aws-cni and its aws-cni-python, pointed at a fake server's
    socket path (nothing listens there until a test starts one)."""
    native_or_skip(install(tmp_path / "bin", tmp_path / "s.sock", "native"))
    return tmp_path / "bin"


# ------------------------------------------------------------------------ installation


def test_install_native_writes_the_patched_binary_and_its_python_fallback(tmp_path: Path) -> None:
    bin_dir, sock = tmp_path / "bin", tmp_path / "run" / "plugin.sock"
    result = install(bin_dir, sock, "native")
    native_or_skip(result)
    assert result.stdout.split() == [str(bin_dir / "aws-cni")]
    native, fallback = bin_dir / "aws-cni", bin_dir / "aws-cni-python"
    assert native.read_bytes()[:4] == ELF
    assert fallback.read_text().startswith("#!")
    assert {p.name: p.stat().st_mode & 0o777 for p in bin_dir.iterdir()} == {
        "aws-cni": 0o755,
        "aws-cni-python": 0o755,
    }
    # The latest CNI version goes into the binary: the 999 error the launcher writes on
    # its own must carry the version the Python launcher would (SUPPORTED[-1]).
    assert config_fields(native) == [
        str(sock).encode(),
        str(fallback).encode(),
        SUPPORTED[-1].encode(),
    ]
    # Python again: the same path becomes the script (the fallback is left, harmless).
    again = install(bin_dir, sock, "python")
    assert again.returncode == 0, again.stderr
    assert native.read_text().startswith("#!")


def test_auto_is_native_only_with_a_server_socket(tmp_path: Path) -> None:
    native_or_skip(install(tmp_path / "a", tmp_path / "s.sock", "auto"))
    assert (tmp_path / "a" / "aws-cni").read_bytes()[:4] == ELF
    none = install(tmp_path / "b", "", "auto")
    assert none.returncode == 0, none.stderr
    assert (tmp_path / "b" / "aws-cni").read_text().startswith("#!")
    assert not (tmp_path / "b" / "aws-cni-python").exists()
    assert none.stderr == ""
    refused = install(tmp_path / "c", "", "native")
    assert refused.returncode == 1
    assert "--server-socket is empty" in refused.stderr
    assert not (tmp_path / "c").exists()


def test_settings_too_long_for_the_config_area_are_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    result = install(tmp_path / "bin", "/run/" + "x" * install_cmd.CONFIG_SIZE, "native")
    skip_without_native(result)
    assert result.returncode == 1
    assert "config area holds" in result.stderr
    assert "--server-socket" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bin").exists()


@pytest.mark.parametrize("no_compiler", ["CC points nowhere", "no cc on PATH"])
def test_without_a_compiler_auto_writes_the_python_launcher_with_a_notice(
    tmp_path: Path, no_compiler: str
) -> None:
    env = (
        {"CC": "/nonexistent/cc"}
        if no_compiler == "CC points nowhere"
        else {"PATH": "/nonexistent", "CC": ""}
    )
    auto = install(tmp_path / "auto", tmp_path / "s.sock", "auto", **env)
    native = install(tmp_path / "native", tmp_path / "s.sock", "native", **env)
    assert auto.returncode == 0, auto.stderr
    if install_cmd.NATIVE_BINARY.is_file():
        # A regular install ships the binary built with the package: no compiler needed.
        assert (tmp_path / "auto" / "aws-cni").read_bytes()[:4] == ELF
        assert auto.stderr == ""
        assert native.returncode == 0, native.stderr
        return
    assert (tmp_path / "auto" / "aws-cni").read_text().startswith("#!")
    assert not (tmp_path / "auto" / "aws-cni-python").exists()
    notice = auto.stderr.strip().splitlines()
    assert len(notice) == 1
    assert "notice: writing the Python launcher" in notice[0]
    assert "C compiler" in notice[0]
    # Asked for explicitly, it is an error, and nothing is written.
    assert native.returncode == 1
    assert "no native launcher" in native.stderr
    assert not (tmp_path / "native").exists()


def test_launcher_c_compiles_warning_free_and_matches_the_installer(tmp_path: Path) -> None:
    cc = install_cmd.c_compiler()
    if cc is None:
        pytest.skip("no C compiler")
    source = install_cmd.NATIVE_SOURCE.read_text()
    out = tmp_path / "launcher"
    build = subprocess.run(
        [*cc, "-std=c99", "-pedantic", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
         str(install_cmd.NATIVE_SOURCE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert f"#define CONFIG_SIZE {install_cmd.CONFIG_SIZE}\n" in source
    assert f'#define MARKER "{install_cmd.CONFIG_MARKER.decode()}"\n' in source
    # The marker appears once (the area itself) and the area is there in full, zeroed.
    image = out.read_bytes()
    assert image.count(install_cmd.CONFIG_MARKER) == 1
    at = image.index(install_cmd.CONFIG_MARKER)
    assert (
        image[at + len(install_cmd.CONFIG_MARKER) : at + install_cmd.CONFIG_SIZE].strip(b"\0")
        == b""
    )
    # The timeout matches the Python client's.
    from vpccni.core import zygote

    assert f"#define PRESTART_TIMEOUT_MS {int(zygote.PRESTART_TIMEOUT_S * 1000)} " in source
    assert f'#define MAGIC "{zygote.MAGIC.decode()}"\n' in source


# ------------------------------------------------------------ protocol (a fake server)


@dataclass
class Request:
    fields: list[bytes]
    inodes: list[int]
    after: bytes = b""  # what the launcher sent after the request ("go\n", or nothing)


@dataclass
class FakeServer:
    """A plugin server that records each request and answers as ``mode`` says:
    serve (ready, then ``exit status len`` + body), refuse, garbage, close (before
    anything), silent (never answers), lost (closes after "go"), bad (a broken reply)."""

    path: bytes
    mode: str = "serve"
    status: int = 0
    body: bytes = b""
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(30)
                with contextlib.suppress(OSError):
                    self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            data += conn.recv(1 << 16)
        inodes = [os.fstat(fd).st_ino for fd in fds]
        for fd in fds:
            os.close(fd)
        request = Request(data[4:].split(b"\0"), inodes)
        self.requests.append(request)
        if self.mode in ("refuse", "garbage"):
            conn.sendall(b"refuse testing\n" if self.mode == "refuse" else b"hello\n")
        if self.mode in ("refuse", "garbage", "silent"):
            request.after = _read_to_eof(conn)  # the launcher closes: EOF, never "go"
            return
        if self.mode == "close":
            return
        conn.sendall(b"ready\n")
        while len(request.after) < 3 and (chunk := conn.recv(3)):
            request.after += chunk
        if self.mode == "bad":
            conn.sendall(b"exot 0 0\n")
        elif self.mode == "serve":
            conn.sendall(b"exit %d %d\n" % (self.status, len(self.body)) + self.body)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.sock.close()
        self.thread.join(10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _read_to_eof(conn: socket.socket) -> bytes:
    got = b""
    while chunk := conn.recv(4096):
        got += chunk
    return got


@pytest.fixture(scope="module")
def ns() -> Iterator[Netns]:
    made = create_netns("vnl")
    try:
        yield made
    finally:
        delete_netns(made)


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: bytes
    stderr: str
    fd_inodes: list[int]  # this run's stdin, stdout, stderr


Env = dict[str, str | bytes]


def run(
    ns: Netns,
    binary: Path,
    env: Env,
    *,
    stdin: bytes = b"{}",
    cwd: Path | None = None,
    umask: int = -1,
) -> Run:
    """Exec ``binary`` in ``ns`` with exactly ``env`` (+ PATH, and LANG: under the C locale
    the Python launcher's interpreter adds LC_CTYPE to its environment, PEP 538)."""
    base: Env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **env}
    full = {os.fsencode(k): os.fsencode(v) for k, v in base.items()}
    with tempfile.TemporaryFile() as infile:
        infile.write(stdin)
        infile.seek(0)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, str(binary)],
            stdin=infile, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=full, cwd=cwd, umask=umask,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        inodes = [os.fstat(f.fileno()).st_ino for f in (infile, proc.stdout, proc.stderr)]
        out, err = proc.communicate(timeout=60)
    return Run(proc.returncode, out, err.decode(errors="replace"), inodes)


@contextlib.contextmanager
def fake_server(path: Path | bytes, mode: str = "serve", **kw: Any) -> Iterator[FakeServer]:
    server = FakeServer(os.fsencode(path), mode, **kw)
    try:
        yield server
    finally:
        server.close()


def both(bins: Path) -> tuple[Path, Path]:
    return bins / "aws-cni", bins / "aws-cni-python"


@pytest.mark.netns
def test_the_request_is_the_python_launchers_byte_for_byte(ns: Netns, bins: Path) -> None:
    # Odd bytes: a non-ASCII cwd, a value that is not UTF-8, values holding "=", an empty one.
    cwd = bins.parent / "d\xe9j\xe0"
    cwd.mkdir()
    env: Env = {
        "CNI_COMMAND": "ADD",
        "CNI_ARGS": "K8S_POD_NAME=a=b;X=",
        "ODD": b"\xff\xfe value",
        "EMPTY": "",
    }
    requests = []
    for binary in both(bins):
        # No VPCCNI_PLUGIN_SERVER_SOCKET: each uses the socket its installer configured,
        # which for the binary proves the config area is read at run time.
        with fake_server(bins.parent / "s.sock", status=0, body=b'{"ok": true}\n') as server:
            got = run(ns, binary, env, cwd=cwd, umask=0o027)
        assert (got.returncode, got.stdout) == (0, b'{"ok": true}\n'), got.stderr
        assert len(server.requests) == 1
        request = server.requests[0]
        assert request.inodes == got.fd_inodes  # its own stdin, stdout and stderr
        assert request.after == b"go\n"
        requests.append(request.fields)
    native, python = requests
    assert native[0] == b"vpccni-zygote/1"
    assert native[2:5] == [b"%d" % 0o027, os.fsencode(cwd), b"1"]
    assert (native[5], python[5]) == (
        os.fsencode(bins / "aws-cni"),
        os.fsencode(bins / "aws-cni-python"),
    )
    assert native[:5] + native[6:] == python[:5] + python[6:]
    assert b"ODD=\xff\xfe value" in native


@pytest.mark.netns
@pytest.mark.parametrize(
    ("status", "body"),
    [(0, b""), (1, b'{"code": 4, "msg": "x"}\n'), (7, b"[" + b"1, " * 200_000 + b"1]\n")],
    ids=["empty", "error", "large"],
)
def test_replies_are_relayed_as_the_python_launcher_does(
    ns: Netns, bins: Path, status: int, body: bytes
) -> None:
    env: Env = {"CNI_COMMAND": "DEL"}
    for binary in both(bins):
        with fake_server(bins.parent / "s.sock", status=status, body=body):
            got = run(ns, binary, env)
        assert (got.returncode, got.stdout) == (status, body), (binary.name, got.stderr)


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["refuse", "garbage", "close", "silent"])
def test_no_ready_falls_back_to_the_python_launcher_once(ns: Netns, bins: Path, mode: str) -> None:
    # ADD without a container id: the command fails at once (code 4), plumbing nothing.
    env: Env = {"CNI_COMMAND": "ADD", "CNI_NETNS": ns.path}
    direct = run(ns, bins / "aws-cni-python", {**env, SOCKET_ENV: ""})
    assert json.loads(direct.stdout)["code"] == 4
    with fake_server(bins.parent / "s.sock", mode) as server:
        got = run(ns, bins / "aws-cni", env)  # "silent": after the 3 s pre-start timeout
    assert (got.returncode, got.stdout) == (direct.returncode, direct.stdout)
    assert "Traceback" not in got.stderr
    # One connection: the Python launcher it fell back to did not try the server again,
    # and the server never got "go" (nothing ran there).
    assert len(server.requests) == 1
    assert server.requests[0].after == b""


@pytest.mark.netns
def test_version_and_an_empty_socket_setting_never_connect(ns: Netns, bins: Path) -> None:
    with fake_server(bins.parent / "s.sock") as server:
        for binary in both(bins):
            version = run(ns, binary, {"CNI_COMMAND": "VERSION"}, stdin=b'{"cniVersion": "0.4.0"}')
            assert version.returncode == 0, version.stderr
            assert json.loads(version.stdout)["cniVersion"] == "0.4.0"
        off = run(ns, bins / "aws-cni", {"CNI_COMMAND": "ADD", SOCKET_ENV: ""})
        assert json.loads(off.stdout)["code"] == 4
        assert server.requests == []


@pytest.mark.netns
def test_a_server_lost_after_go_gives_the_python_launchers_999_document(
    ns: Netns, bins: Path
) -> None:
    # A socket path that is not valid UTF-8 and not ASCII: escaped as json.dumps does.
    odd = Path(tempfile.mkdtemp(prefix="vnl")) / os.fsdecode(b"\xc3\xa9\xff\xe2\x82")
    odd.mkdir()
    try:
        sock = os.fsencode(odd / "s.sock")
        outputs = []
        for binary in both(bins):
            with fake_server(sock, "lost") as server:
                got = run(ns, binary, {"CNI_COMMAND": "ADD", SOCKET_ENV: sock})
            assert server.requests[0].after == b"go\n"
            assert got.returncode == 1
            assert "Traceback" not in got.stderr
            outputs.append(got.stdout)
        assert outputs[0] == outputs[1]
        error = json.loads(outputs[0])
        assert error["cniVersion"] == SUPPORTED[-1]
        assert (error["code"], error["msg"]) == (999, "plugin server failed")
        # One U+FFFD per maximal invalid sequence (\xff, then \xe2\x82), as Python's.
        assert "\\u00e9\\ufffd\\ufffd/s.sock" in outputs[0].decode()
        assert "the plugin server closed the connection" in error["details"]
    finally:
        shutil.rmtree(odd.parent)


@pytest.mark.netns
def test_a_broken_reply_after_go_is_a_999_error(ns: Netns, bins: Path) -> None:
    with fake_server(bins.parent / "s.sock", "bad"):
        got = run(ns, bins / "aws-cni", {"CNI_COMMAND": "ADD"})
    assert got.returncode == 1
    error = json.loads(got.stdout)
    assert (error["code"], error["msg"]) == (999, "plugin server failed")
    assert "unexpected reply exot 0 0" in error["details"]


@pytest.mark.netns
def test_a_missing_fallback_is_a_cni_error(ns: Netns, bins: Path) -> None:
    (bins / "aws-cni-python").unlink()
    got = run(ns, bins / "aws-cni", {"CNI_COMMAND": "VERSION"})
    assert got.returncode == 1
    error = json.loads(got.stdout)
    assert (error["cniVersion"], error["code"], error["msg"]) == (
        SUPPORTED[-1],
        999,
        "plugin launcher failed",
    )
    assert re.search(r"aws-cni-python: No such file or directory$", error["details"])


# ------------------------------------------- test_plugin_server.py, once per launcher


@pytest.fixture(params=["python", "native"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[suite.Node]:
    """test_plugin_server.py's node, its aws-cni being the launcher of the parameter."""
    made = suite.Node(tmp_path, "vnl")
    try:
        result = install(tmp_path / "bin", made.sock, request.param)
        native_or_skip(result)
        head = Path(made.launcher).read_bytes()[:4]
        assert (head == ELF) == (request.param == "native")
        yield made
    finally:
        made.close()


# Collected here, these run with the `node` fixture above.
test_add_check_get_del_answer_the_same_with_and_without_server = (
    suite.test_add_check_get_del_answer_the_same_with_and_without_server
)
test_errors_are_byte_identical_with_and_without_server = (
    suite.test_errors_are_byte_identical_with_and_without_server
)
test_commands_see_the_launchers_environment_only = (
    suite.test_commands_see_the_launchers_environment_only
)
test_no_server_or_a_stale_socket_falls_back_to_running_in_the_launcher = (
    suite.test_no_server_or_a_stale_socket_falls_back_to_running_in_the_launcher
)
test_a_server_in_another_network_namespace_is_refused = (
    suite.test_a_server_in_another_network_namespace_is_refused
)
test_a_request_lost_mid_way_is_a_999_error_without_traceback = (
    suite.test_a_request_lost_mid_way_is_a_999_error_without_traceback
)
test_ten_concurrent_requests_are_all_served_and_reaped = (
    suite.test_ten_concurrent_requests_are_all_served_and_reaped
)
test_version_is_answered_by_the_launcher_itself = (
    suite.test_version_is_answered_by_the_launcher_itself
)
