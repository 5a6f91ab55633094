"""ipamd configuration: the upstream aws-node environment variables, validated at start.

``IpamdConfig.from_env(os.environ)`` reads the same variables as upstream aws-node (so the
DaemonSet manifest works unchanged) plus a few ``VPCCNI_*`` variables for what upstream
hard-codes but tests and side-by-side simulated nodes must change (socket path, state
directory, loop intervals).  Every problem is collected and reported at once in one
:class:`ConfigError`; each names the variable, the value and what would be accepted.

We are stricter than upstream on purpose: upstream silently maps a bad ``WARM_ENI_TARGET``
(or a negative ``WARM_IP_TARGET``, an unparseable boolean, ...) to a default, and the node
then runs with a pool the operator never asked for.  A CNI that refuses to start with a
clear message is easier to operate.  docs/ipamd-configuration.md lists every variable and
every place where we differ.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import TypeVar

T = TypeVar("T")

DEFAULT_SOCKET = "/var/run/aws-node/ipamd.sock"
#: Where ipamd's plugin server listens unless told otherwise: the socket `vpccni install-cni`
#: points launchers at by default (vpccni.core.zygote.DEFAULT_SOCKET; a test pins it).
DEFAULT_PLUGIN_SERVER_SOCKET = "/run/vpccni/plugin.sock"
DEFAULT_STATE_DIR = "/var/run/aws-node"
CHECKPOINT_NAME = "ipam.json"
DEFAULT_LOG_FILE = "/host/var/log/aws-routed-eni/ipamd.log"
DEFAULT_PLUGIN_LOG_FILE = "/var/log/aws-routed-eni/plugin.log"

_TRUE = frozenset({"1", "t", "true"})  # Go's strconv.ParseBool, case-folded
_FALSE = frozenset({"0", "f", "false"})
_LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
_RESERVED_VETH_PREFIXES = ("eth", "lo", "vlan")
_VETH_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,4}$")
MTU_MAX = 9001
MTU_MIN_IPV4 = 576
MTU_MIN_IPV6 = 1280
HTTP_TIMEOUT_MIN = 10  # upstream ignores smaller values
#: botocore's retry settings for ipamd's EC2 client: the single definition (ec2.py reads
#: them from here).  11 total attempts = the first request + upstream's 10 SDK retries.
EC2_RETRY_MODE_VAR = "VPCCNI_EC2_RETRY_MODE"
EC2_MAX_ATTEMPTS_VAR = "VPCCNI_EC2_MAX_ATTEMPTS"
EC2_RETRY_MODES = ("standard", "adaptive")
DEFAULT_EC2_RETRY_MODE = "standard"
DEFAULT_EC2_MAX_ATTEMPTS = 11
#: Prefix delegation may fall back to secondary IPs in a fragmented subnet (our addition).
PD_FALLBACK_VAR = "VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS"
PLUGIN_SERVER_SOCKET_VAR = "VPCCNI_PLUGIN_SERVER_SOCKET_PATH"
#: sun_path holds 108 bytes, the terminating NUL included.
UNIX_PATH_MAX = 107


class ConfigError(ValueError):
    """One or more environment variables are invalid; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid ipamd configuration ({len(self.problems)} problem(s)):\n{lines}")


class _Reader:
    """Reads typed values from the environment, collecting problems instead of raising."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def raw(self, name: str) -> str | None:
        # An empty value means "unset", as it does for upstream's os.Getenv checks.
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def bad(self, name: str, value: str, expected: str) -> None:
        self.problems.append(f"{name}={value!r}: expected {expected}")

    def _parse(self, name: str, default: T, parse: Callable[[str], T | None], expected: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        parsed = parse(value)
        if parsed is None:
            self.bad(name, value, expected)
            return default
        return parsed

    def boolean(self, name: str, default: bool) -> bool:
        def parse(v: str) -> bool | None:
            low = v.lower()
            return True if low in _TRUE else False if low in _FALSE else None

        return self._parse(name, default, parse, "true or false")

    def integer(self, name: str, default: int, minimum: int | None = None) -> int:
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        if minimum == 0:
            expected = "a non-negative integer"

        def parse(v: str) -> int | None:
            try:
                n = int(v, 10)
            except ValueError:
                return None
            return None if minimum is not None and n < minimum else n

        return self._parse(name, default, parse, expected)

    def seconds(self, name: str, default: float, positive: bool = False) -> float:
        expected = "a number of seconds > 0" if positive else "a number of seconds >= 0"

        def parse(v: str) -> float | None:
            try:
                n = float(v)
            except ValueError:
                return None
            if n != n or n in (float("inf"), float("-inf")):
                return None
            return None if n < 0 or (positive and n == 0) else n

        return self._parse(name, default, parse, expected)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        expected = "one of " + ", ".join(choices) + " (case-insensitive)"
        return self._parse(
            name, default, lambda v: v.lower() if v.lower() in choices else None, expected
        )

    def string(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value


def _valid_bind(value: str) -> bool:
    """``host:port`` (port 0-65535) or ``unix:<path>``, as upstream's introspection accepts."""
    if value.startswith("unix:"):
        return len(value) > len("unix:")
    host, sep, port = value.rpartition(":")
    return bool(sep and host) and port.isdigit() and int(port) < 65536


def _parse_cidrs(reader: _Reader, name: str, *, v6_allowed: bool) -> tuple[str, ...]:
    value = reader.raw(name)
    if value is None:
        return ()
    out: list[str] = []
    for item in (s.strip() for s in value.split(",")):
        if not item:
            continue
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            reader.bad(name, item, "a comma-separated list of CIDRs like 10.0.0.0/16")
            continue
        if net.version == 6 and not v6_allowed:
            # Upstream drops IPv6 entries here; keeping that (with a warning) keeps drop-in.
            reader.warnings.append(f"{name}: IPv6 entry {item!r} ignored (IPv4 CIDRs only)")
            continue
        out.append(str(net))
    return tuple(out)


def _parse_tags(reader: _Reader, name: str) -> dict[str, str]:
    value = reader.raw(name)
    if value is None:
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        reader.bad(name, value, 'a JSON object of string tags, e.g. {"team":"net"}')
        return {}
    tags: dict[str, str] = {}
    for key, tag_value in data.items():
        if "k8s.amazonaws.com" in key:
            # Reserved for the CNI's own tags; upstream drops these too.
            reader.warnings.append(f"{name}: tag {key!r} ignored (k8s.amazonaws.com is reserved)")
            continue
        tags[key] = tag_value
    return tags


@dataclass(frozen=True)
class IpamdConfig:
    """Everything ipamd reads from its environment, typed and validated."""

    # -- warm pool (section 4.4) ---------------------------------------------------------
    warm_eni_target: int = 1
    warm_ip_target: int = 0
    minimum_ip_target: int = 0
    warm_prefix_target: int = 0
    #: ``-1`` (or anything < 1 in the environment) means "the instance type's limit".
    max_eni: int = -1
    ip_cooldown_period: float = 30.0
    # -- modes ---------------------------------------------------------------------------
    enable_prefix_delegation: bool = False
    #: VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS: when EC2 has no aligned /28 left in the subnet
    #: (InsufficientCidrBlocks), take secondary IPs instead (our addition; upstream waits).
    pd_fallback_to_secondary_ips: bool = False
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    custom_network_cfg: bool = False
    enable_pod_eni: bool = False
    pod_sg_enforcing_mode: str = "strict"
    enable_multi_nic: bool = False
    enable_subnet_discovery: bool = True
    enable_imds_only_mode: bool = False
    # -- node networking -----------------------------------------------------------------
    external_snat: bool = False
    exclude_snat_cidrs: tuple[str, ...] = ()
    external_service_cidrs: tuple[str, ...] = ()
    eni_mtu: int = MTU_MAX
    pod_mtu: int = MTU_MAX
    veth_prefix: str = "eni"
    # -- files and logs ------------------------------------------------------------------
    backing_store: str = os.path.join(DEFAULT_STATE_DIR, CHECKPOINT_NAME)
    log_level: str = "debug"
    log_file: str = DEFAULT_LOG_FILE
    plugin_log_file: str = DEFAULT_PLUGIN_LOG_FILE
    # -- EC2 and ENI management ----------------------------------------------------------
    cluster_name: str = ""
    additional_eni_tags: Mapping[str, str] = field(default_factory=dict)
    disable_network_resource_provisioning: bool = False
    disable_leaked_eni_cleanup: bool = False
    manage_untagged_eni: bool = True
    manage_enis_non_schedulable: bool = False
    ec2_endpoint: str = ""
    http_timeout: int = HTTP_TIMEOUT_MIN
    ec2_retry_mode: str = DEFAULT_EC2_RETRY_MODE
    #: Total attempts per EC2 call, the first included (botocore's ``total_max_attempts``).
    ec2_max_attempts: int = DEFAULT_EC2_MAX_ATTEMPTS
    # -- servers -------------------------------------------------------------------------
    disable_metrics: bool = False
    disable_introspection: bool = False
    introspection_bind_address: str = "127.0.0.1:61679"
    metrics_bind_address: str = "127.0.0.1:61678"
    socket_path: str = DEFAULT_SOCKET
    #: VPCCNI_PLUGIN_SERVER_SOCKET_PATH: where the plugin server ipamd starts and supervises
    #: listens (unset: install-cni's default socket; "": ipamd starts none).  See
    #: docs/plugin-server.md.
    plugin_server_socket_path: str = DEFAULT_PLUGIN_SERVER_SOCKET
    state_dir: str = DEFAULT_STATE_DIR
    # -- identity ------------------------------------------------------------------------
    node_name: str = ""
    cni_version: str = ""
    # -- timers upstream hard-codes (seconds) ----------------------------------------------
    pool_interval: float = 5.0
    reconcile_interval: float = 60.0
    decrease_interval: float = 30.0
    eni_min_lifetime: float = 60.0
    subnet_exhausted_backoff: float = 120.0
    reconcile_cooldown: float = 60.0
    #: Non-fatal findings (dropped entries, clamped values) the daemon should log at start.
    warnings: tuple[str, ...] = ()

    @property
    def warm_ip_targets_defined(self) -> bool:
        return self.warm_ip_target != 0 or self.minimum_ip_target != 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IpamdConfig:
        """Build and validate the configuration; raises :class:`ConfigError` listing every
        bad variable."""
        r = _Reader(env)
        ipv6 = r.boolean("ENABLE_IPv6", False)
        # Upstream's code default for ENABLE_IPv4 is false while its README and manifest say
        # true; defaulting to "not IPv6" makes an empty environment a valid IPv4 node and
        # ENABLE_IPv6=true alone a valid IPv6 node.
        ipv4 = r.boolean("ENABLE_IPv4", not ipv6)
        pd = r.boolean("ENABLE_PREFIX_DELEGATION", False)
        state_dir = r.string("VPCCNI_STATE_DIR", DEFAULT_STATE_DIR)
        eni_mtu = r.integer("AWS_VPC_ENI_MTU", MTU_MAX)
        pod_mtu = r.integer("POD_MTU", eni_mtu)
        custom = r.boolean("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", False)
        pod_eni = r.boolean("ENABLE_POD_ENI", False)
        http_timeout = r.integer("HTTP_TIMEOUT", HTTP_TIMEOUT_MIN, minimum=1)
        if http_timeout < HTTP_TIMEOUT_MIN:
            r.warnings.append(
                f"HTTP_TIMEOUT={http_timeout}: below the minimum {HTTP_TIMEOUT_MIN}, "
                f"using {HTTP_TIMEOUT_MIN}"
            )
            http_timeout = HTTP_TIMEOUT_MIN
        config = cls(
            warm_eni_target=r.integer("WARM_ENI_TARGET", 1, minimum=0),
            warm_ip_target=r.integer("WARM_IP_TARGET", 0, minimum=0),
            minimum_ip_target=r.integer("MINIMUM_IP_TARGET", 0, minimum=0),
            warm_prefix_target=r.integer("WARM_PREFIX_TARGET", 0, minimum=0),
            max_eni=_max_eni(r.integer("MAX_ENI", -1)),
            ip_cooldown_period=float(r.integer("IP_COOLDOWN_PERIOD", 30, minimum=0)),
            enable_prefix_delegation=pd,
            pd_fallback_to_secondary_ips=r.boolean(PD_FALLBACK_VAR, False),
            enable_ipv4=ipv4,
            enable_ipv6=ipv6,
            custom_network_cfg=custom,
            enable_pod_eni=pod_eni,
            pod_sg_enforcing_mode=r.choice(
                "POD_SECURITY_GROUP_ENFORCING_MODE", "strict", ("strict", "standard")
            ),
            enable_multi_nic=r.boolean("ENABLE_MULTI_NIC", False),
            enable_subnet_discovery=r.boolean("ENABLE_SUBNET_DISCOVERY", True),
            enable_imds_only_mode=r.boolean("ENABLE_IMDS_ONLY_MODE", False),
            external_snat=r.boolean("AWS_VPC_K8S_CNI_EXTERNALSNAT", False),
            exclude_snat_cidrs=_parse_cidrs(
                r, "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", v6_allowed=False
            ),
            external_service_cidrs=_parse_cidrs(r, "AWS_EXTERNAL_SERVICE_CIDRS", v6_allowed=False),
            eni_mtu=eni_mtu,
            pod_mtu=pod_mtu,
            veth_prefix=r.string("AWS_VPC_K8S_CNI_VETHPREFIX", "eni"),
            backing_store=r.string(
                "AWS_VPC_K8S_CNI_BACKING_STORE", os.path.join(state_dir, CHECKPOINT_NAME)
            ),
            log_level=r.choice("AWS_VPC_K8S_CNI_LOGLEVEL", "debug", _LOG_LEVELS),
            log_file=r.string("AWS_VPC_K8S_CNI_LOG_FILE", DEFAULT_LOG_FILE),
            plugin_log_file=r.string("AWS_VPC_K8S_PLUGIN_LOG_FILE", DEFAULT_PLUGIN_LOG_FILE),
            cluster_name=r.string("CLUSTER_NAME", ""),
            additional_eni_tags=_parse_tags(r, "ADDITIONAL_ENI_TAGS"),
            disable_network_resource_provisioning=r.boolean(
                "DISABLE_NETWORK_RESOURCE_PROVISIONING", False
            ),
            disable_leaked_eni_cleanup=r.boolean("DISABLE_LEAKED_ENI_CLEANUP", False),
            manage_untagged_eni=r.boolean("MANAGE_UNTAGGED_ENI", True),
            manage_enis_non_schedulable=r.boolean("AWS_MANAGE_ENIS_NON_SCHEDULABLE", False),
            ec2_endpoint=r.string("AWS_EC2_ENDPOINT", ""),
            http_timeout=http_timeout,
            ec2_retry_mode=_ec2_retry_mode(r),
            ec2_max_attempts=_ec2_max_attempts(r),
            disable_metrics=r.boolean("DISABLE_METRICS", False),
            disable_introspection=r.boolean("DISABLE_INTROSPECTION", False),
            introspection_bind_address=r.string("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:61679"),
            metrics_bind_address=r.string("VPCCNI_METRICS_BIND_ADDRESS", "127.0.0.1:61678"),
            socket_path=r.string("VPCCNI_IPAMD_SOCKET", DEFAULT_SOCKET),
            plugin_server_socket_path=_plugin_server_socket(r),
            state_dir=state_dir,
            node_name=r.string("MY_NODE_NAME", ""),
            cni_version=r.string("VPC_CNI_VERSION", ""),
            pool_interval=r.seconds("VPCCNI_POOL_INTERVAL", 5.0, positive=True),
            reconcile_interval=r.seconds("VPCCNI_RECONCILE_INTERVAL", 60.0, positive=True),
            decrease_interval=r.seconds("VPCCNI_DECREASE_INTERVAL", 30.0),
            eni_min_lifetime=r.seconds("VPCCNI_ENI_MIN_LIFETIME", 60.0),
            subnet_exhausted_backoff=r.seconds("VPCCNI_SUBNET_EXHAUSTED_BACKOFF", 120.0),
            reconcile_cooldown=r.seconds("VPCCNI_RECONCILE_COOLDOWN", 60.0),
        )
        _cross_checks(r, config)
        if r.problems:
            raise ConfigError(r.problems)
        return replace(config, warnings=tuple(r.warnings))


def _ec2_retry_mode(r: _Reader) -> str:
    return r.choice(EC2_RETRY_MODE_VAR, DEFAULT_EC2_RETRY_MODE, EC2_RETRY_MODES)


def _ec2_max_attempts(r: _Reader) -> int:
    return r.integer(EC2_MAX_ATTEMPTS_VAR, DEFAULT_EC2_MAX_ATTEMPTS, minimum=1)


def ec2_retry_from_env(env: Mapping[str, str]) -> tuple[str, int]:
    """(retry mode, total attempts) from VPCCNI_EC2_RETRY_MODE / VPCCNI_EC2_MAX_ATTEMPTS, with
    the daemon's defaults and validation, for code that builds an EC2 client without a whole
    :class:`IpamdConfig` (``Ec2Api.from_env``).  Raises :class:`ConfigError` on a bad value."""
    r = _Reader(env)
    mode, attempts = _ec2_retry_mode(r), _ec2_max_attempts(r)
    if r.problems:
        raise ConfigError(r.problems)
    return mode, attempts


def _max_eni(value: int) -> int:
    # Upstream: "MAX_ENI values below 1 are ignored" (the instance limit applies).
    return value if value >= 1 else -1


def _cross_checks(r: _Reader, c: IpamdConfig) -> None:
    """Rules that involve more than one variable (upstream's validateEnvVars and
    isConfigValid), reported with the variables involved."""
    prefix = c.veth_prefix
    if not _VETH_PREFIX_RE.match(prefix) or prefix in _RESERVED_VETH_PREFIXES:
        r.bad(
            "AWS_VPC_K8S_CNI_VETHPREFIX",
            prefix,
            "1-4 characters from [A-Za-z0-9_-], not eth, lo or vlan",
        )
    mtu_min = MTU_MIN_IPV6 if c.enable_ipv6 else MTU_MIN_IPV4
    family = "IPv6" if c.enable_ipv6 else "IPv4"
    for name, mtu in (("AWS_VPC_ENI_MTU", c.eni_mtu), ("POD_MTU", c.pod_mtu)):
        # A non-integer was already reported (and replaced by the valid default).
        if r.raw(name) is not None and not mtu_min <= mtu <= MTU_MAX:
            r.bad(name, str(mtu), f"an integer in [{mtu_min}, {MTU_MAX}] ({family})")
    if c.enable_ipv4 == c.enable_ipv6:
        both = "both true" if c.enable_ipv4 else "both false"
        r.problems.append(
            f"ENABLE_IPv4={c.enable_ipv4!s:.5}, ENABLE_IPv6={c.enable_ipv6!s:.5} ({both}): "
            "expected exactly one of them true"
        )
    if c.enable_ipv6 and not c.enable_prefix_delegation:
        r.problems.append(
            "ENABLE_IPv6=true with ENABLE_PREFIX_DELEGATION=false: "
            "expected ENABLE_PREFIX_DELEGATION=true (IPv6 pods take addresses from a /80 prefix)"
        )
    if c.enable_ipv6 and c.custom_network_cfg:
        r.problems.append(
            "ENABLE_IPv6=true with AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true: "
            "expected custom networking off in IPv6 mode"
        )
    if (
        c.enable_prefix_delegation
        and c.enable_ipv4
        and c.warm_ip_target <= 0
        and c.warm_prefix_target <= 0
        and c.minimum_ip_target <= 0
    ):
        r.problems.append(
            "ENABLE_PREFIX_DELEGATION=true with WARM_IP_TARGET, WARM_PREFIX_TARGET and "
            "MINIMUM_IP_TARGET all 0 or unset: expected at least one of them > 0 "
            "(the upstream manifest sets WARM_PREFIX_TARGET=1)"
        )
    if c.pd_fallback_to_secondary_ips and not c.enable_prefix_delegation:
        r.warnings.append(f"{PD_FALLBACK_VAR}=true has no effect without ENABLE_PREFIX_DELEGATION")
    if c.pd_fallback_to_secondary_ips and c.enable_ipv6:
        r.warnings.append(
            f"{PD_FALLBACK_VAR}=true has no effect in IPv6 mode (the /80 comes from the VPC's "
            "IPv6 block, never fragmented by IPv4 addresses)"
        )
    if c.plugin_log_file.lower() == "stdout":
        r.bad(
            "AWS_VPC_K8S_PLUGIN_LOG_FILE",
            c.plugin_log_file,
            "a file path or stderr (stdout carries the CNI result)",
        )
    for name, value in (
        ("INTROSPECTION_BIND_ADDRESS", c.introspection_bind_address),
        ("VPCCNI_METRICS_BIND_ADDRESS", c.metrics_bind_address),
    ):
        if not _valid_bind(value):
            r.bad(name, value, "host:port (port 0-65535) or unix:<path>")
    for name, path in (
        ("VPCCNI_IPAMD_SOCKET", c.socket_path),
        ("VPCCNI_STATE_DIR", c.state_dir),
        ("AWS_VPC_K8S_CNI_BACKING_STORE", c.backing_store),
    ):
        if not os.path.isabs(path):
            r.bad(name, path, "an absolute path")
    _check_plugin_server_socket(r, c)


def _plugin_server_socket(r: _Reader) -> str:
    """Unset: the default socket; set but empty: no server.  Unlike upstream's variables
    (empty = unset), empty is a value here, as ``install-cni --server-socket ''`` is."""
    value = r.env.get(PLUGIN_SERVER_SOCKET_VAR)
    if value is None:
        return DEFAULT_PLUGIN_SERVER_SOCKET
    return value.strip()


def _check_plugin_server_socket(r: _Reader, c: IpamdConfig) -> None:
    path = c.plugin_server_socket_path
    if not path:
        return
    name = PLUGIN_SERVER_SOCKET_VAR
    if not os.path.isabs(path) or path.endswith("/"):
        r.bad(name, path, "an absolute path to a socket file (empty: no plugin server)")
    elif len(os.fsencode(path)) > UNIX_PATH_MAX:
        r.bad(name, path, f"a unix socket path of at most {UNIX_PATH_MAX} bytes")
    elif os.path.normpath(path) == os.path.normpath(c.socket_path):
        r.bad(name, path, "a path other than VPCCNI_IPAMD_SOCKET's")
    else:
        blocker = _non_directory_ancestor(os.path.dirname(path))
        if blocker is not None:
            r.bad(name, path, f"a path whose directory can exist ({blocker} is not a directory)")


def _non_directory_ancestor(directory: str) -> str | None:
    """The nearest existing ancestor of ``directory`` (itself included) when that is not a
    directory: the server could never create its socket there."""
    current = directory
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return None if os.path.isdir(current) else current
