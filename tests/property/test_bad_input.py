"""Bad input: whatever the runtime hands the plugin, it answers with one clean JSON document.

The properties (issue 2, "Bad input"), for any environment, ``CNI_ARGS`` and stdin:

* exit status 0 or 1; on 1, stdout holds exactly one JSON object with ``cniVersion``,
  an integer ``code`` and a string ``msg`` (on 0, one JSON object, or nothing for the verbs
  the spec lets succeed silently: DEL, CHECK, STATUS, GC);
* no Python traceback on stdout or stderr, and never the catch-all 999 "internal error":
  bad input must be named, not crash the plugin;
* nothing changes on the host: no link of the root namespace, no link/address/route of the
  node namespace the plugin runs in, no network namespace, no file outside the temp dir.

Safety: every generated path (stateDir, ipamd.stateFile, pluginLogFile, ...) points into a
temp dir, and an absolute ``CNI_NETNS`` always names something under ``<tmp>/ns`` that is not
a namespace, so ADD fails before any plumbing.  The plugin still runs in a test-made node
namespace (in-process: a worker thread that ``setns``-ed into it; exec'd: children forked
from that thread), so even a regression could only touch that namespace.

Most examples run in-process through ``vpccni.core.dispatch.run`` (fast); a smaller set
execs the real ``aws-cni`` console script.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import TypeVar

import pytest
from hypothesis import HealthCheck
from hypothesis import event
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.support.cnictl import NETNS_DIR
from tests.support.cnictl import Netns
from tests.support.cnictl import create_netns
from tests.support.cnictl import delete_netns
from vpccni.core import dispatch

pytestmark = pytest.mark.netns

#: The console script kubelet execs, next to the interpreter running the tests.
PLUGIN = Path(sys.executable).parent / "aws-cni"
VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "GET")
#: Verbs whose success the spec lets be silent (no result document).
SILENT_OK = frozenset({"DEL", "CHECK", "STATUS", "GC"})
#: Where the plugin writes by default; nothing may appear there during the run.
WATCHED_DIRS = ("/var/lib/cni/vpccni", "/var/run/aws-node", "/var/log/aws-routed-eni")
TRACEBACK = "Traceback (most recent call last)"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

# ----------------------------------------------------------------------------- sandbox


def _enter_netns(path: str) -> None:
    """Move the calling thread (only) into the namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _ip_json(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def _links(*netns: str) -> frozenset[tuple[Any, ...]]:
    # Identity and configuration only: counters and operstate of real NICs may move.
    return frozenset(
        (
            link.get("ifindex"),
            link.get("ifname"),
            link.get("mtu"),
            link.get("address"),
            link.get("link_type"),
            link.get("master"),
        )
        for link in _ip_json(*netns, "link")
    )


def _tree(root: str) -> frozenset[str]:
    found: set[str] = set()
    for base, dirs, files in os.walk(root):
        found.update(os.path.join(base, n) for n in (*dirs, *files))
    return frozenset(found)


def _nsfs_mounts() -> frozenset[str]:
    with open("/proc/self/mountinfo") as f:
        # mountinfo: "... mount-point ... - fstype source options"
        return frozenset(line.split()[4] for line in f if " - nsfs " in line)


@dataclass(frozen=True)
class HostState:
    root_links: frozenset[tuple[Any, ...]]
    node_links: frozenset[tuple[Any, ...]]
    node_addrs: str
    node_routes: str
    netns_names: frozenset[str]
    nsfs_mounts: frozenset[str]
    watched: frozenset[str]
    cwd: frozenset[str]
    ns_dir: frozenset[str]


@dataclass
class Sandbox:
    """A temp dir, a node namespace and a worker thread living in that namespace."""

    tmp: Path
    node: Netns
    executor: ThreadPoolExecutor
    #: CNI_NETNS values generated so far (to tell our namespaces from colleagues')
    netns_seen: set[str] = field(default_factory=set)

    @property
    def cwd(self) -> Path:
        return self.tmp / "cwd"

    @property
    def ns_dir(self) -> Path:
        return self.tmp / "ns"

    @property
    def not_a_netns(self) -> Path:
        return self.ns_dir / "regular-file"

    def in_node(self, fn: Callable[[], T]) -> T:
        return self.executor.submit(fn).result(timeout=60)

    def snapshot(self) -> HostState:
        return HostState(
            root_links=_links(),
            node_links=_links("-n", self.node.name),
            node_addrs=json.dumps(_ip_json("-n", self.node.name, "addr"), sort_keys=True),
            node_routes=json.dumps(_ip_json("-n", self.node.name, "route", "show", "table", "all")),
            netns_names=frozenset(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else frozenset(),
            nsfs_mounts=_nsfs_mounts(),
            watched=frozenset(p for d in WATCHED_DIRS for p in _tree(d)),
            cwd=_tree(str(self.cwd)),
            ns_dir=_tree(str(self.ns_dir)),
        )

    def assert_unchanged(self, before: HostState) -> None:
        after = self.snapshot()
        assert after.root_links == before.root_links, "root namespace links changed"
        assert after.node_links == before.node_links, "node namespace links changed"
        assert after.node_addrs == before.node_addrs, "node namespace addresses changed"
        assert after.node_routes == before.node_routes, "node namespace routes changed"
        # Colleagues create namespaces concurrently: a namespace is ours when it carries a
        # name we generated as CNI_NETNS (what a plugin creating the pod namespace would do).
        ours = {os.path.basename(p) for p in self.netns_seen} - {""}
        assert not (after.netns_names - before.netns_names) & ours, "plugin created a netns"
        assert not {
            m for m in after.nsfs_mounts - before.nsfs_mounts if m.startswith(str(self.tmp))
        }, "a namespace was mounted where CNI_NETNS pointed"
        assert after.watched == before.watched, "files appeared in the plugin's default dirs"
        assert after.cwd == before.cwd == frozenset(), "files appeared in the working directory"
        assert after.ns_dir == before.ns_dir, "something was created where CNI_NETNS pointed"


@contextlib.contextmanager
def make_sandbox() -> Iterator[Sandbox]:
    tmp = Path(tempfile.mkdtemp(prefix="vpcprop-"))
    for sub in ("cwd", "ns", "state", "ipam", "log", "cache"):
        (tmp / sub).mkdir()
    (tmp / "ns" / "regular-file").write_text("not a namespace\n")
    # Existing things of the wrong kind for path fields (a file where a dir is expected, ...).
    (tmp / "fixtures" / "dir").mkdir(parents=True)
    (tmp / "fixtures" / "file").write_text("not JSON\n")
    node = create_netns("vpcprop")
    executor = ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="in-node", initializer=_enter_netns, initargs=(node.path,)
    )
    sb = Sandbox(tmp=tmp, node=node, executor=executor)
    try:
        # The worker, and every process it forks, must really be in the node namespace.
        node_ino = os.stat(node.path).st_ino
        assert sb.in_node(lambda: os.stat("/proc/thread-self/ns/net").st_ino) == node_ino
        child = sb.in_node(
            lambda: (
                subprocess.run(
                    ["readlink", "/proc/self/ns/net"], capture_output=True, text=True, check=True
                ).stdout
            )
        )
        assert child.strip() == f"net:[{node_ino}]"
        yield sb
    finally:
        executor.shutdown(wait=True)
        delete_netns(node)
        shutil.rmtree(tmp, ignore_errors=True)
        _reset_plugin_logging()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with make_sandbox() as sb:
        yield sb


@contextlib.contextmanager
def _in_dir(path: Path) -> Iterator[None]:
    # In-process, a relative path the plugin writes would land in our cwd: make it a
    # dedicated empty dir, checked afterwards.
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _reset_plugin_logging() -> None:
    """Back to a fresh process's logging: logsetup.configure leaves handlers behind."""
    root = logging.getLogger("vpccni")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.NOTSET)
    root.propagate = True


# ----------------------------------------------------------------------------- runners


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: str
    stderr: str


def run_in_process(sb: Sandbox, env: Mapping[str, str], stdin: bytes) -> Outcome:
    def call() -> Outcome:
        _reset_plugin_logging()
        out, err = io.StringIO(), io.StringIO()
        status = dispatch.run(env, io.BytesIO(stdin), out, err)
        _reset_plugin_logging()
        return Outcome(status, out.getvalue(), err.getvalue())

    return sb.in_node(call)


def run_exec(sb: Sandbox, env: Mapping[str, str], stdin: bytes) -> Outcome:
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}

    def call() -> Outcome:
        proc = subprocess.run(
            [str(PLUGIN)],
            input=stdin,
            capture_output=True,
            env=full_env,
            cwd=sb.cwd,
            timeout=60,
            check=False,
        )
        return Outcome(
            proc.returncode,
            proc.stdout.decode("utf-8", "backslashreplace"),
            proc.stderr.decode("utf-8", "backslashreplace"),
        )

    return sb.in_node(call)


#: Core bugs found by these properties and reported to the lead, each pinned by an
#: xfail(strict) test below.  The properties tolerate exactly these 999 replies (matched on
#: ``details``) so they keep guarding against new crashes; delete an entry together with
#: its xfail marker once the bug is fixed.
KNOWN_CORE_BUGS: dict[str, re.Pattern[str]] = {}


def _known_core_bug(outcome: Outcome) -> str | None:
    if outcome.status != 1:
        return None
    try:
        doc = json.loads(outcome.stdout)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("code") != 999:
        return None
    details = str(doc.get("details", ""))
    return next((name for name, rx in KNOWN_CORE_BUGS.items() if rx.search(details)), None)


def check_contract(outcome: Outcome, env: Mapping[str, str]) -> dict[str, Any] | None:
    """Assert the bad-input contract; returns the JSON document (None when silent)."""
    known = _known_core_bug(outcome)
    if known is not None:
        event(f"known core bug: {known}")
        return None
    context = f"env={dict(env)!r}\nstdout={outcome.stdout!r}\nstderr={outcome.stderr[-2000:]!r}"
    assert TRACEBACK not in outcome.stdout, context
    assert TRACEBACK not in outcome.stderr, context
    assert outcome.status in (0, 1), context
    command = env.get("CNI_COMMAND", "")
    if outcome.status == 0 and command in SILENT_OK and not outcome.stdout.strip():
        event(f"{command} -> ok (silent)")
        return None
    try:
        doc = json.loads(outcome.stdout)  # one document: "Extra data" when there are two
    except ValueError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc})\n{context}") from None
    assert isinstance(doc, dict), context
    assert isinstance(doc.get("cniVersion"), str), context
    if outcome.status == 1:
        assert type(doc.get("code")) is int, context
        assert isinstance(doc.get("msg"), str), context
        assert isinstance(doc.get("details", ""), str), context
        assert doc["code"] != 999, f"bad input crashed the plugin (internal error)\n{context}"
    else:
        assert "code" not in doc, context
    # Shown by --hypothesis-show-statistics: how deep the inputs got (which codes).
    event(f"{command if command in VERBS else 'other'} -> {doc.get('code', 'ok')}")
    # No pod namespace exists anywhere in the generated input: ADD must never succeed.
    assert not (command == "ADD" and outcome.status == 0), context
    return doc


# ----------------------------------------------------------------------------- strategies

#: Characters an environment value can really carry: no NUL; undecodable bytes arrive as
#: surrogate escapes (os.environ uses surrogateescape).
_env_chars = st.characters(
    blacklist_categories=["Cs"], blacklist_characters="\x00"
) | st.sampled_from(["\udc80", "\udcff", "\udce9"])
env_text = st.text(_env_chars, max_size=40)
long_text = st.text(_env_chars, min_size=200, max_size=5000)
name_chars = st.characters(
    blacklist_categories=["Cs"], blacklist_characters="\x00/"
) | st.sampled_from(["\udc80", "\udcff"])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

VALID_CID = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
VALID_IFNAME = st.sampled_from(["eth0", "eth1", "net1"]) | st.from_regex(r"\A[a-z][a-z0-9]{0,14}\Z")


def _optional(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.none() | strategy


@st.composite
def netns_values(draw: st.DrawFn, sb: Sandbox) -> str | None:
    value = draw(
        st.one_of(
            st.none(),
            st.just(""),
            env_text,  # relative and odd shapes
            st.builds(lambda n: f"{sb.ns_dir}/{n}", st.text(name_chars, min_size=1, max_size=300)),
            st.just(str(sb.not_a_netns)),  # exists, not a namespace
            st.just(str(sb.ns_dir)),  # a directory
            st.builds(
                lambda n: f"/var/run/netns/vpcprop-absent-{n}", st.from_regex(r"\A[a-z]{8}\Z")
            ),
        )
    )
    if value is not None and value.startswith("/"):
        # Safety: never a path that could be a real namespace.
        assert value.startswith((str(sb.ns_dir), "/var/run/netns/vpcprop-absent-")), value
        sb.netns_seen.add(value)
    return str(value) if value is not None else None


@st.composite
def cni_args(draw: st.DrawFn) -> str | None:
    kind = draw(st.sampled_from(["missing", "pairs", "garbage", "edge"]))
    if kind == "missing":
        return None
    if kind == "garbage":
        return draw(env_text | long_text)
    if kind == "edge":
        return draw(
            st.sampled_from(
                [
                    "",
                    "=",
                    "==",
                    ";",
                    ";;",
                    "K=",
                    "=V",
                    "K",
                    "a=b=c",
                    "IgnoreUnknown=1;X=Y;=",
                    "IgnoreUnknown=true;;;",
                    "IgnoreUnknown=0;K8S_POD_NAME=a",
                    "K8S_POD_NAME==;",
                ]
            )
        )
    keys = st.sampled_from(
        [
            "K8S_POD_NAME",
            "K8S_POD_NAMESPACE",
            "K8S_POD_INFRA_CONTAINER_ID",
            "K8S_POD_UID",
            "IgnoreUnknown",
        ]
    ) | st.text(_env_chars, max_size=12)
    values = st.sampled_from(["1", "true", "false", ""]) | env_text | long_text
    pairs = draw(st.lists(st.tuples(keys, values), max_size=6))
    sep = draw(st.sampled_from([";", ";;", " ; "]))
    return sep.join(f"{k}={v}" for k, v in pairs)


@st.composite
def environments(draw: st.DrawFn, sb: Sandbox, command: str | None = None) -> dict[str, str]:
    if command is None:
        command = draw(
            _optional(
                st.sampled_from(VERBS)
                | st.sampled_from(["add", "Add", "del ", " VERSION", "DELETE", "", "version"])
                | env_text
            )
        )
    values: dict[str, str | None] = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": draw(_optional(VALID_CID | env_text | long_text)),
        "CNI_IFNAME": draw(_optional(VALID_IFNAME | env_text | long_text)),
        "CNI_NETNS": draw(netns_values(sb)),
        "CNI_PATH": draw(_optional(st.just("/usr/lib/cni:/opt/cni/bin") | env_text | long_text)),
        "CNI_ARGS": draw(cni_args()),
    }
    extra = draw(st.dictionaries(st.from_regex(r"\ACNI_[A-Z_]{1,12}\Z"), env_text, max_size=2))
    env = {k: v for k, v in values.items() if v is not None}
    for k, v in extra.items():
        env.setdefault(k, v)
    return env


def base_conf(sb: Sandbox) -> dict[str, Any]:
    """A valid aws-cni configuration whose every path is inside the sandbox."""
    return {
        "cniVersion": "1.1.0",
        "name": "bad-input",
        "type": "aws-cni",
        "vethPrefix": "eni",
        "mtu": "9001",
        "podSGEnforcingMode": "strict",
        "pluginLogLevel": "debug",
        "stateDir": str(sb.tmp / "state"),
        "runtimeCacheDir": str(sb.tmp / "cache"),
        "ipamd": {
            "backend": "fake",
            "stateFile": str(sb.tmp / "ipam" / "ipam.json"),
            "pools": ["10.250.0.0/24"],
            "driver": "test_veth",
        },
        "drivers": {"enabled": ["test_veth"], "test_veth": {}},
        "runtimeConfig": {
            "io.kubernetes.cri.pod-annotations": {"k8s.amazonaws.com/nicConfig": "x"},
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        },
        "prevResult": {
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/x"}],
            "ips": [{"address": "10.250.0.2/32", "interface": 0, "gateway": "169.254.1.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {},
        },
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
    }


#: (container path, key) of every field the plugin treats as a file-system path.
PATH_FIELDS = {
    ((), "pluginLogFile"),
    ((), "stateDir"),
    ((), "runtimeCacheDir"),
    (("ipamd",), "stateFile"),
    (("ipamd",), "socket"),
}
#: Places the mutations reach into (nested garbage goes here).
CONTAINERS: tuple[tuple[Any, ...], ...] = (
    (),
    ("ipamd",),
    ("drivers",),
    ("drivers", "test_veth"),
    ("runtimeConfig",),
    ("runtimeConfig", "io.kubernetes.cri.pod-annotations"),
    ("runtimeConfig", "portMappings", 0),
    ("prevResult",),
    ("prevResult", "ips", 0),
    ("prevResult", "interfaces", 0),
    ("prevResult", "routes", 0),
)
BAD_VERSIONS = ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.1", "1.0.0-rc1", "", " 1.0.0", "v1.0.0"]
TYPES = ["aws-cni", "egress-cni", "test_veth", "routed_eni", "prefix", "portmap", "nope", ""]


def _walk(conf: Any, path: tuple[Any, ...]) -> Any:
    node = conf
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, list) or len(node) <= step:
                return None
        elif not isinstance(node, dict):
            return None
        node = node[step] if isinstance(step, int) else node.get(step)
    return node


def _safe_path_value(sb: Sandbox) -> st.SearchStrategy[Any]:
    # A path field gets a sandbox path or a non-string (schema violations) - never a
    # random string, which could name a file anywhere.
    under = st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00/"),
        min_size=1,
        max_size=30,
    )
    return st.one_of(
        st.builds(lambda n: str(sb.tmp / "log" / n), under),
        st.sampled_from([str(sb.tmp / "fixtures" / "file"), str(sb.tmp / "fixtures" / "dir")]),
        st.just("stderr"),
        st.just(""),
        st.none() | st.integers() | st.lists(st.integers(), max_size=2),
    )


def _sanitize_paths(conf: Any, sb: Sandbox) -> None:
    """Whatever the mutations did, a path field that is a string stays inside the sandbox."""
    for where, key in PATH_FIELDS:
        holder = _walk(conf, where)
        if isinstance(holder, dict) and isinstance(holder.get(key), str):
            value = holder[key]
            if value not in ("", "stderr") and not value.startswith(str(sb.tmp) + "/"):
                holder[key] = str(sb.tmp / "log" / "sanitized")


def _same_shape(value: Any) -> st.SearchStrategy[Any]:
    """A value of the same JSON type as ``value``: gets past type checks, reaches deeper."""
    if isinstance(value, bool) or value is None:
        return json_scalars
    if isinstance(value, int):
        return st.integers()
    if isinstance(value, str):
        return st.text(max_size=30) | st.sampled_from(["1.1.0", "10.0.0.0/8", "::/0", "éé"])
    if isinstance(value, list):
        return st.lists(_same_shape(value[0]) if value else json_values, max_size=3)
    if isinstance(value, dict):
        return st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)
    return json_values


@st.composite
def mutated_confs(draw: st.DrawFn, sb: Sandbox) -> dict[str, Any]:
    conf = copy.deepcopy(base_conf(sb))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "set", "version", "type", "replace", "versions"]))
        where = draw(st.sampled_from(CONTAINERS))
        holder = _walk(conf, where)
        if op == "version":
            conf["cniVersion"] = draw(st.sampled_from(BAD_VERSIONS) | json_values)
        elif op == "versions":
            conf["cniVersions"] = draw(
                st.lists(st.sampled_from([*BAD_VERSIONS, "1.0.0"])) | json_values
            )
        elif op == "type":
            conf["type"] = draw(st.sampled_from(TYPES) | json_values)
        elif not isinstance(holder, dict):
            continue
        elif op == "drop" and holder:
            del holder[draw(st.sampled_from(sorted(holder)))]
        elif op == "set":
            key = draw(
                st.sampled_from(sorted(holder)) | st.text(max_size=12)
                if holder
                else st.text(max_size=12)
            )
            if (where, key) in PATH_FIELDS:
                holder[key] = draw(_safe_path_value(sb))
            else:
                holder[key] = draw(json_values | _same_shape(holder.get(key)))
        elif op == "replace" and where:
            parent = _walk(conf, where[:-1])
            if isinstance(parent, dict):
                parent[where[-1]] = draw(json_values)
    _sanitize_paths(conf, sb)
    return conf


@st.composite
def stdin_bytes(draw: st.DrawFn, sb: Sandbox) -> bytes:
    kind = draw(st.sampled_from(["conf", "conf", "conf", "json", "bytes", "tweaked"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    raw = json.dumps(draw(mutated_confs(sb)), ensure_ascii=draw(st.booleans())).encode(
        "utf-8", "surrogatepass"
    )
    if kind == "tweaked":
        how = draw(st.sampled_from(["truncate", "append", "utf16", "bom"]))
        if how == "truncate":
            raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
        elif how == "append":
            raw += draw(st.binary(min_size=1, max_size=20))
        elif how == "utf16":
            raw = raw.decode().encode("utf-16")
        else:
            raw = b"\xef\xbb\xbf" + raw
    return raw


# ----------------------------------------------------------------------------- properties


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,  # no .hypothesis/ directory in the tree (or in the watched cwd)
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


def _with_host_checks(sb: Sandbox, body: Callable[[], None]) -> None:
    before = sb.snapshot()
    with _in_dir(sb.cwd):
        body()
    sb.assert_unchanged(before)


def test_any_environment_any_stdin_in_process(sandbox: Sandbox) -> None:
    """Random env (any verb, any variable shape) with random stdin of every kind."""

    @_settings(400)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        env = data.draw(environments(sandbox), label="env")
        stdin = data.draw(stdin_bytes(sandbox), label="stdin")
        check_contract(run_in_process(sandbox, env, stdin), env)

    _with_host_checks(sandbox, prop)


def test_valid_environment_mutated_conf_in_process(sandbox: Sandbox) -> None:
    """A well-formed invocation of each verb, so the conf mutations get past env checks."""

    @_settings(500)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        command = data.draw(st.sampled_from(VERBS), label="command")
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": data.draw(VALID_CID, label="cid"),
            "CNI_IFNAME": "eth0",
            "CNI_NETNS": data.draw(
                st.sampled_from([str(sandbox.not_a_netns), str(sandbox.ns_dir / "gone")]),
                label="netns",
            ),
            "CNI_PATH": "/usr/lib/cni",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        }
        sandbox.netns_seen.add(env["CNI_NETNS"])
        conf = data.draw(mutated_confs(sandbox), label="conf")
        check_contract(run_in_process(sandbox, env, json.dumps(conf).encode()), env)

    _with_host_checks(sandbox, prop)


def _del_env(sb: Sandbox, cid: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": "DEL",
        "CNI_CONTAINERID": cid,
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": str(sb.ns_dir / "gone"),
        "CNI_PATH": "/usr/lib/cni",
    }


garbage_results = json_values | st.fixed_dictionaries(
    {},
    optional={
        "cniVersion": json_values,
        "interfaces": json_values
        | st.lists(
            st.dictionaries(st.sampled_from(["name", "mac", "sandbox", "mtu"]), json_values)
        ),
        "ips": json_values
        | st.lists(
            st.dictionaries(
                st.sampled_from(["address", "interface", "gateway", "version"]), json_values
            )
        ),
        "routes": json_values
        | st.lists(st.dictionaries(st.sampled_from(["dst", "gw"]), json_values)),
        "dns": json_values,
    },
)


def test_del_with_garbage_prev_result_in_process(sandbox: Sandbox) -> None:
    """DEL must not be blocked by an unusable prevResult (the runtime could never clean up):
    an object prevResult, however broken, is ignored and DEL succeeds; a non-object is a
    schema violation (code 7)."""

    @_settings(200)
    @given(prev=garbage_results, cid=VALID_CID)
    @example(prev={"dns": "x"}, cid="c1")
    @example(prev={"ips": [{"address": "10.0.0.1/32", "interface": "zero"}]}, cid="c1")
    def prop(prev: Any, cid: str) -> None:
        conf = base_conf(sandbox)
        conf["prevResult"] = prev
        env = _del_env(sandbox, cid)
        doc = check_contract(run_in_process(sandbox, env, json.dumps(conf).encode()), env)
        if isinstance(prev, dict):
            assert doc is None, f"DEL failed on prevResult={prev!r}: {doc}"
        else:
            assert doc is not None, prev
            assert doc["code"] == 7, doc

    _with_host_checks(sandbox, prop)


def test_any_input_exec_console_script(sandbox: Sandbox) -> None:
    """The same contract through the real executable kubelet runs (fresh process each)."""
    assert PLUGIN.exists(), f"{PLUGIN} is not installed"

    @_settings(25)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        env = data.draw(environments(sandbox), label="env")
        stdin = data.draw(stdin_bytes(sandbox), label="stdin")
        check_contract(run_exec(sandbox, env, stdin), env)

    _with_host_checks(sandbox, prop)


# ----------------------------------------------------------------------------- known core bugs
# One deterministic case per entry of KNOWN_CORE_BUGS (plus one the properties cannot see,
# because it is accepted silently): each is what a user would get instead of a named error.


def _valid_env(sb: Sandbox, command: str, **overrides: str) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": str(sb.ns_dir / "gone"),
        "CNI_PATH": "/usr/lib/cni",
    }
    env.update(overrides)
    return env


def _reply(sb: Sandbox, env: Mapping[str, str], conf: Mapping[str, Any]) -> tuple[int, Any]:
    with _in_dir(sb.cwd):
        outcome = run_in_process(sb, env, json.dumps(conf).encode())
    assert TRACEBACK not in outcome.stderr, outcome.stderr[-1500:]
    return outcome.status, json.loads(outcome.stdout) if outcome.stdout.strip() else None


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
@pytest.mark.parametrize("what", ["regular file", "directory", "too long"])
def test_netns_that_is_not_a_namespace_is_named(sandbox: Sandbox, command: str, what: str) -> None:
    netns = {
        "regular file": str(sandbox.not_a_netns),
        "directory": str(sandbox.ns_dir),
        "too long": f"{sandbox.ns_dir}/{'n' * 300}",
    }[what]
    status, doc = _reply(sandbox, _valid_env(sandbox, command, CNI_NETNS=netns), base_conf(sandbox))
    if command == "DEL":  # the pod's namespace may be anything by now: DEL is idempotent
        assert status == 0 or (doc["code"] == 4 and "CNI_NETNS" in doc["details"]), doc
    else:
        assert (status, doc["code"]) == (1, 4), doc
        assert "CNI_NETNS" in doc["details"], doc


@pytest.mark.parametrize("dns", ["x", 5, [1]])
def test_del_ignores_prev_result_with_bad_dns(sandbox: Sandbox, dns: Any) -> None:
    conf = base_conf(sandbox)
    conf["prevResult"]["dns"] = dns
    status, doc = _reply(sandbox, _valid_env(sandbox, "DEL"), conf)
    assert (status, doc) == (0, None)


@pytest.mark.parametrize("command", ["DEL", "GC"])
def test_pools_that_are_not_cidrs_are_named(sandbox: Sandbox, command: str) -> None:
    conf = base_conf(sandbox)
    conf["ipamd"]["pools"] = ["nope"]
    status, doc = _reply(sandbox, _valid_env(sandbox, command), conf)
    assert (status, doc["code"]) == (1, 7), doc
    assert "pools" in doc["details"], doc


@pytest.mark.parametrize(
    ("where", "key", "target"),
    [
        ((), "stateDir", "file"),
        (("ipamd",), "stateFile", "dir"),
        (("ipamd",), "stateFile", "file"),
        ((), "pluginLogFile", "dir"),
    ],
)
def test_unusable_state_paths_are_io_errors(
    sandbox: Sandbox, where: tuple[str, ...], key: str, target: str
) -> None:
    conf = base_conf(sandbox)
    holder = _walk(conf, where)
    holder[key] = str(sandbox.tmp / "fixtures" / target)
    status, doc = _reply(sandbox, _valid_env(sandbox, "DEL"), conf)
    assert (status, doc["code"]) == (1, 5), doc
    assert holder[key] in doc["details"], doc


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_container_id_with_trailing_newline_is_rejected(sandbox: Sandbox, command: str) -> None:
    env = _valid_env(sandbox, command, CNI_CONTAINERID="abc\n")
    status, doc = _reply(sandbox, env, base_conf(sandbox))
    assert (status, doc["code"]) == (1, 4), doc
    assert "CNI_CONTAINERID" in doc["details"], doc
