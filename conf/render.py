"""The default ``10-aws.conflist``, rendered from aws-node's environment as upstream does.

Upstream (``cmd/aws-vpc-cni/main.go``, reference section 8.2) fills the placeholders of
``misc/10-aws.conflist``; this module builds the same document:

* ``aws-cni``: ``vethPrefix`` <- AWS_VPC_K8S_CNI_VETHPREFIX (eni); ``mtu`` (a string) <-
  POD_MTU, else AWS_VPC_ENI_MTU, else 9001; ``podSGEnforcingMode`` <-
  POD_SECURITY_GROUP_ENFORCING_MODE (strict); ``pluginLogFile``/``pluginLogLevel`` <-
  AWS_VPC_K8S_PLUGIN_LOG_FILE / AWS_VPC_K8S_PLUGIN_LOG_LEVEL;
* ``egress-cni``: the same ``mtu`` and log level; ``randomizeSNAT`` <-
  AWS_VPC_K8S_CNI_RANDOMIZESNAT (prng);
  IPv6 cluster (ENABLE_IPv6=true): ``enabled`` <- ENABLE_V4_EGRESS (true), host-local in
  169.254.172.0/22 with route 0.0.0.0/0 and dataDir /run/cni/v6pd/egress-v4-ipam,
  ``nodeIP`` <- metadata ``local-ipv4`` (a missing one is fatal), log file <-
  AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE;
  IPv4 cluster: ``enabled`` <- ENABLE_V6_EGRESS (false), fd00::ac:00/118, ``::/0``,
  /run/cni/v4pd/egress-v6-ipam, ``nodeIP`` <- metadata ``ipv6`` only when enabled (missing:
  a warning, and the plugin is disabled with nodeIP ""), log file <-
  AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE;
* ``portmap`` with ``snat: true``; then ``bandwidth`` (ENABLE_BANDWIDTH_PLUGIN) and
  ``tuning`` setting ``net.ipv6.conf.{all,default,lo}.disable_ipv6=1`` (DISABLE_POD_V6).

``nodeIP`` can be given instead of read from metadata (``vpccni install-cni --node-ip``).
The result is validated with the schemas the plugin itself uses
(:func:`vpccni.cli.conf_cmd.check_conflist`) before :func:`write_atomically` puts it where
the runtime reads it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import tempfile
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "10-aws.conflist"
DEFAULT_MTU = "9001"
V4_EGRESS = {
    "subnet": "169.254.172.0/22",
    "dst": "0.0.0.0/0",
    "dataDir": "/run/cni/v6pd/egress-v4-ipam",
}
V6_EGRESS = {
    "subnet": "fd00::ac:00/118",
    "dst": "::/0",
    "dataDir": "/run/cni/v4pd/egress-v6-ipam",
}
DEFAULT_PLUGIN_LOG_FILE = "/var/log/aws-routed-eni/plugin.log"
DEFAULT_EGRESS_V4_LOG_FILE = "/var/log/aws-routed-eni/egress-v4-plugin.log"
DEFAULT_EGRESS_V6_LOG_FILE = "/var/log/aws-routed-eni/egress-v6-plugin.log"
DEFAULT_LOG_LEVEL = "Debug"
DISABLE_V6_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
    "net.ipv6.conf.lo.disable_ipv6": "1",
}
# Go's strconv.ParseBool, which upstream's getEnvBoolWithDefault uses
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}

#: metadata key -> value, or None when the instance has none (404)
MetadataLookup = Callable[[str], str | None]


class RenderError(Exception):
    """The environment cannot produce a valid conflist; the message says why."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise RenderError(f"{name}={raw!r} is not a boolean (true or false)")


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value == "" else value


def pod_mtu(env: Mapping[str, str]) -> str:
    """POD_MTU, else AWS_VPC_ENI_MTU, else 9001 (a string, as the template holds it)."""
    return _env(env, "POD_MTU", _env(env, "AWS_VPC_ENI_MTU", DEFAULT_MTU))


def imds_lookup(env: Mapping[str, str]) -> MetadataLookup:
    """Instance metadata through botocore's IMDSv2 fetcher (ipamd's), imported lazily."""

    def lookup(key: str) -> str | None:
        from vpccni.ipamd.metadata import ImdsFetcher  # noqa: PLC0415
        from vpccni.ipamd.metadata import MetadataError  # noqa: PLC0415

        try:
            fetcher = ImdsFetcher(endpoint=env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"))
            value = fetcher.fetch(key)
        except MetadataError as exc:
            raise RenderError(f"instance metadata {key}: {exc} (or give --node-ip)") from None
        return value.strip() if value else None

    return lookup


def _node_ip(
    family: int, given: str | None, lookup: MetadataLookup | None, env: Mapping[str, str]
) -> str | None:
    key = "local-ipv4" if family == 4 else "ipv6"
    if given:
        try:
            ip = ipaddress.ip_address(given)
        except ValueError:
            raise RenderError(f"node IP {given!r} is not an IP address") from None
        if ip.version != family:
            raise RenderError(
                f"node IP {given} is IPv{ip.version}; egress-cni here needs the node's "
                f"IPv{family} address (metadata {key})"
            )
        return str(ip)
    value = (lookup or imds_lookup(env))(key)
    return value or None


def render(
    env: Mapping[str, str],
    *,
    node_ip: str | None = None,
    metadata: MetadataLookup | None = None,
) -> dict[str, Any]:
    """The conflist for ``env``; RenderError when upstream would refuse to start."""
    ipv6 = _bool(env, "ENABLE_IPv6", False)
    mtu = pod_mtu(env)
    level = _env(env, "AWS_VPC_K8S_PLUGIN_LOG_LEVEL", DEFAULT_LOG_LEVEL)
    if ipv6:
        enabled = _bool(env, "ENABLE_V4_EGRESS", True)
        egress = V4_EGRESS
        egress_log = _env(env, "AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE", DEFAULT_EGRESS_V4_LOG_FILE)
        found = _node_ip(4, node_ip, metadata, env)
        if found is None:
            raise RenderError(
                "IPv6 cluster: the node's IPv4 address (instance metadata local-ipv4) is "
                "missing; egress-cni needs it as nodeIP (give it with --node-ip)"
            )
        egress_node_ip = found
    else:
        enabled = _bool(env, "ENABLE_V6_EGRESS", False)
        egress = V6_EGRESS
        egress_log = _env(env, "AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE", DEFAULT_EGRESS_V6_LOG_FILE)
        egress_node_ip = ""
        if enabled:
            found = _node_ip(6, node_ip, metadata, env)
            if found is None:
                log.warning(
                    "ENABLE_V6_EGRESS=true but the node has no IPv6 address (instance "
                    "metadata ipv6): IPv6 egress is disabled"
                )
                enabled = False
            else:
                egress_node_ip = found
    plugins: list[dict[str, Any]] = [
        {
            "name": "aws-cni",
            "type": "aws-cni",
            "vethPrefix": _env(env, "AWS_VPC_K8S_CNI_VETHPREFIX", "eni"),
            "mtu": mtu,
            "podSGEnforcingMode": _env(env, "POD_SECURITY_GROUP_ENFORCING_MODE", "strict"),
            "pluginLogFile": _env(env, "AWS_VPC_K8S_PLUGIN_LOG_FILE", DEFAULT_PLUGIN_LOG_FILE),
            "pluginLogLevel": level,
            "capabilities": {"io.kubernetes.cri.pod-annotations": True},
        },
        {
            "name": "egress-cni",
            "type": "egress-cni",
            "mtu": mtu,
            "enabled": "true" if enabled else "false",
            "randomizeSNAT": _env(env, "AWS_VPC_K8S_CNI_RANDOMIZESNAT", "prng"),
            "nodeIP": egress_node_ip,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": egress["subnet"]}]],
                "routes": [{"dst": egress["dst"]}],
                "dataDir": egress["dataDir"],
            },
            "pluginLogFile": egress_log,
            "pluginLogLevel": level,
        },
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ]
    if _bool(env, "ENABLE_BANDWIDTH_PLUGIN", False):
        plugins.append({"type": "bandwidth", "capabilities": {"bandwidth": True}})
    if _bool(env, "DISABLE_POD_V6", False):
        plugins.append({"type": "tuning", "sysctl": dict(DISABLE_V6_SYSCTLS)})
    conflist = {"cniVersion": "0.4.0", "name": "aws-cni", "disableCheck": True, "plugins": plugins}
    problems = validate(conflist, ipv6)
    if problems:
        raise RenderError("the rendered conflist is invalid: " + "; ".join(problems))
    return conflist


def validate(conflist: Mapping[str, Any], ipv6: bool = False) -> list[str]:
    """Our schemas (what the plugin will check), plus the pod MTU range of the family."""
    from vpccni.cli.conf_cmd import check_conflist  # noqa: PLC0415

    _, problems = check_conflist(conflist)
    problems = list(problems)
    if ipv6:
        mtu = str(conflist["plugins"][0].get("mtu", ""))
        if mtu.isdigit() and not 1280 <= int(mtu) <= 9001:
            problems.append(f"$.plugins[0].mtu: {mtu!r} is outside 1280-9001 (IPv6 pods)")
    return problems


def dumps(conflist: Mapping[str, Any]) -> str:
    """The file's text: indented by 2 spaces, as upstream re-serialises it."""
    return json.dumps(conflist, indent=2) + "\n"


def write_atomically(path: str, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` so that a reader sees the old file or the whole new one, never a
    part: a temp file in the same directory (a name runtimes ignore: no .conf/.conflist/
    .json suffix), fsync, rename, fsync of the directory (so the rename survives a crash)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def render_to(
    conf_dir: str,
    env: Mapping[str, str],
    *,
    node_ip: str | None = None,
    metadata: MetadataLookup | None = None,
) -> str:
    """Render and write ``<conf_dir>/10-aws.conflist``; returns its path."""
    path = os.path.join(conf_dir, FILE_NAME)
    write_atomically(path, dumps(render(env, node_ip=node_ip, metadata=metadata)))
    return path
