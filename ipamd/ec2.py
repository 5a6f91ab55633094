"""ipamd's EC2 layer: exactly the calls ipamd makes, over boto3, returning frozen dataclasses.

Retries are botocore's (``standard`` or ``adaptive`` mode); nothing here loops on an error. When
botocore gives up, the ``ClientError`` becomes an :class:`Ec2Error` whose :class:`Ec2ErrorKind`
lets the pool manager react (back off 120 s after subnet exhaustion, report throttling) without
parsing AWS codes. Every request is counted by botocore event hooks into :class:`ApiStats`; the
same hooks hand each finished call to an optional :data:`CallObserver` (the daemon's
``Metrics.ec2_call``: ``awscni_ec2api_req_count{fn}``, ``awscni_aws_api_latency_ms``), one call
at a time with its own latency, error code and HTTP status.

Thread safety: one :class:`Ec2Api` may be shared by threads (boto3 clients are thread-safe and the
stats take a lock), but allocations must be serialised by the caller: two concurrent
:meth:`Ec2Api.allocate_eni` on one instance can pick the same free device index, and the loser
gets ``InvalidParameterValue`` (OTHER) after its new ENI was deleted again.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from vpccni.ipamd.config import DEFAULT_EC2_MAX_ATTEMPTS
from vpccni.ipamd.config import DEFAULT_EC2_RETRY_MODE
from vpccni.ipamd.config import ec2_retry_from_env

log = logging.getLogger(__name__)

# -- names shared with upstream (reference section 4.6) ------------------------------------------

TAG_INSTANCE_ID = "node.k8s.amazonaws.com/instance_id"
TAG_CREATED_AT = "node.k8s.amazonaws.com/createdAt"
TAG_NO_MANAGE = "node.k8s.amazonaws.com/no_manage"
TAG_CLUSTER_NAME = "cluster.k8s.amazonaws.com/name"
TAG_ENI_OWNER = "eks:eni:owner"
ENI_OWNER = "amazon-vpc-cni"
DESCRIPTION_PREFIX = "aws-K8S-"
# ADDITIONAL_ENI_TAGS may not override the tags ipamd's own bookkeeping depends on.
RESERVED_TAG_FRAGMENT = "k8s.amazonaws.com"
LEAK_MIN_AGE = timedelta(minutes=5)
SUBNET_EXHAUSTED_BACKOFF_SECONDS = 120.0
# Device indexes 0..99: VLAN route tables use vlan id + 100, so 100 is a hard maximum.
MAX_DEVICE_INDEX = 100
# Total attempts, first one included: upstream's SDK makes up to 10 retries.  One definition,
# in config.py, for the daemon's VPCCNI_EC2_MAX_ATTEMPTS default and this API's.
DEFAULT_MAX_ATTEMPTS = DEFAULT_EC2_MAX_ATTEMPTS
DEFAULT_HTTP_TIMEOUT = 10.0  # upstream HTTP_TIMEOUT default, also its floor


# -- errors ------------------------------------------------------------------------------------


class Ec2ErrorKind(enum.Enum):
    THROTTLED = "throttled"
    SUBNET_EXHAUSTED = "subnet_exhausted"
    ENI_LIMIT = "eni_limit"
    IP_LIMIT = "ip_limit"
    NOT_FOUND = "not_found"
    UNREACHABLE = "unreachable"  # no HTTP answer at all (connection refused, timeout)
    OTHER = "other"


_KIND_BY_CODE = {
    "RequestLimitExceeded": Ec2ErrorKind.THROTTLED,
    "Throttling": Ec2ErrorKind.THROTTLED,
    "ThrottlingException": Ec2ErrorKind.THROTTLED,
    "InsufficientFreeAddressesInSubnet": Ec2ErrorKind.SUBNET_EXHAUSTED,
    "InsufficientCidrBlocks": Ec2ErrorKind.SUBNET_EXHAUSTED,
    "AttachmentLimitExceeded": Ec2ErrorKind.ENI_LIMIT,
    "PrivateIpAddressLimitExceeded": Ec2ErrorKind.IP_LIMIT,
}


def classify(code: str) -> Ec2ErrorKind:
    """The kind of an AWS error code (``InvalidXxx.NotFound`` codes are NOT_FOUND)."""
    if code in _KIND_BY_CODE:
        return _KIND_BY_CODE[code]
    if code.endswith(".NotFound"):
        return Ec2ErrorKind.NOT_FOUND
    return Ec2ErrorKind.OTHER


class Ec2Error(Exception):
    """An EC2 call failed after botocore's retries; ``kind`` says why in ipamd's terms."""

    def __init__(self, kind: Ec2ErrorKind, code: str, message: str, action: str) -> None:
        super().__init__(f"{action}: {code}: {message}")
        self.kind = kind
        self.code = code
        self.message = message
        self.action = action

    @property
    def backoff_seconds(self) -> float:
        """How long the pool manager should wait before asking again for this cause."""
        return SUBNET_EXHAUSTED_BACKOFF_SECONDS if self.kind is Ec2ErrorKind.SUBNET_EXHAUSTED else 0


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkCard:
    index: int
    max_enis: int


@dataclass(frozen=True)
class InstanceTypeLimits:
    instance_type: str
    max_enis: int
    ipv4_per_eni: int  # including each ENI's primary address (pods get one fewer)
    ipv6_per_eni: int
    network_cards: tuple[NetworkCard, ...]
    default_network_card: int
    hypervisor: str
    bare_metal: bool

    @property
    def is_nitro(self) -> bool:
        return self.hypervisor == "nitro"


@dataclass(frozen=True)
class EniAttachment:
    attachment_id: str
    instance_id: str
    device_index: int
    network_card_index: int
    status: str
    delete_on_termination: bool


@dataclass(frozen=True)
class EniInfo:
    eni_id: str
    mac: str
    subnet_id: str
    vpc_id: str
    description: str
    interface_type: str  # "interface", "trunk", "efa", "efa-only", "branch"
    status: str  # "available", "in-use", ...
    primary_ipv4: str
    secondary_ipv4s: tuple[str, ...]
    ipv4_prefixes: tuple[str, ...]
    ipv6_addresses: tuple[str, ...]
    ipv6_prefixes: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    attachment: EniAttachment | None
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def is_trunk(self) -> bool:
        return self.interface_type == "trunk"

    @property
    def is_efa(self) -> bool:
        return self.interface_type in ("efa", "efa-only")


# -- call accounting ---------------------------------------------------------------------------


#: Told about every finished API call (after botocore's retries): ``(api, latency_ms,
#: error_code or None, http_status)``; status 0 when no HTTP answer came (connection error).
CallObserver = Callable[[str, float, str | None, int], None]


@dataclass(frozen=True)
class LatencyKey:
    api: str
    error: bool
    status: int  # HTTP status of the last attempt; 0 when there was no HTTP answer


@dataclass
class LatencyStat:
    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0


class ApiStats:
    """Per-action EC2 figures, for ``awscni_ec2api_req_count`` and ``awscni_aws_api_latency_ms``.

    ``calls`` counts API calls (a paginated describe counts each page), ``attempts`` counts HTTP
    requests including botocore's retries, ``errors`` counts failed calls by (action, AWS code),
    and ``latency`` aggregates wall time per call (retries included) by (api, error, status).
    """

    def __init__(self, observer: CallObserver | None = None) -> None:
        self._observer = observer
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._latency: dict[LatencyKey, LatencyStat] = {}

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def attempts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._attempts)

    def errors(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._errors)

    def latency(self) -> dict[LatencyKey, LatencyStat]:
        with self._lock:
            return {k: LatencyStat(v.count, v.total_ms, v.max_ms) for k, v in self._latency.items()}

    # botocore event handlers (see Ec2Api.__init__); signatures follow botocore's emit kwargs.
    def _before_call(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        context["vpccni_started"] = time.monotonic()
        with self._lock:
            self._calls[model.name] = self._calls.get(model.name, 0) + 1

    def _before_send(self, event_name: str, **_: Any) -> None:
        action = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self._attempts[action] = self._attempts.get(action, 0) + 1

    def _after_call(
        self,
        model: Any,
        http_response: Any,
        parsed: dict[str, Any],
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        code = parsed.get("Error", {}).get("Code")
        self._record(model.name, context, code, int(getattr(http_response, "status_code", 0)))

    def _after_call_error(
        self, event_name: str, exception: Exception, context: dict[str, Any], **_: Any
    ) -> None:
        self._record(event_name.rsplit(".", 1)[-1], context, type(exception).__name__, 0)

    def _record(self, action: str, context: dict[str, Any], code: str | None, status: int) -> None:
        started = context.get("vpccni_started")
        elapsed = (time.monotonic() - started) * 1000.0 if started is not None else 0.0
        key = LatencyKey(action, code is not None, status)
        with self._lock:
            stat = self._latency.setdefault(key, LatencyStat())
            stat.count += 1
            stat.total_ms += elapsed
            stat.max_ms = max(stat.max_ms, elapsed)
            if code is not None:
                self._errors[(action, code)] = self._errors.get((action, code), 0) + 1
        if self._observer is not None:
            # Outside the lock (the observer may take its own) and never fatal: metrics must
            # not turn a successful EC2 call into a failed one.
            try:
                self._observer(action, elapsed, code, status)
            except Exception:
                log.exception("EC2 call observer failed on %s", action)


# -- configuration -----------------------------------------------------------------------------


def parse_additional_tags(raw: str | None) -> dict[str, str]:
    """ADDITIONAL_ENI_TAGS: a JSON object; keys containing ``k8s.amazonaws.com`` are dropped."""
    if not raw or not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"ADDITIONAL_ENI_TAGS is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("ADDITIONAL_ENI_TAGS must be a JSON object of string tags")
    return {str(k): str(v) for k, v in doc.items() if RESERVED_TAG_FRAGMENT not in str(k)}


def endpoint_from_env(env: Mapping[str, str]) -> str | None:
    """EC2 endpoint override: AWS_ENDPOINT_URL_EC2 (the SDK's), else upstream's AWS_EC2_ENDPOINT."""
    return env.get("AWS_ENDPOINT_URL_EC2") or env.get("AWS_EC2_ENDPOINT") or None


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- the API -----------------------------------------------------------------------------------


class Ec2Api:
    """The EC2 calls ipamd makes for one instance.

    ``instance_id`` names the node (description, tags, DescribeInstances); ``cluster_name`` and
    ``additional_tags`` are CLUSTER_NAME and the parsed ADDITIONAL_ENI_TAGS. ``clock`` is for
    tests of the leaked-ENI age rule.
    """

    def __init__(
        self,
        instance_id: str,
        region: str,
        *,
        cluster_name: str = "",
        additional_tags: Mapping[str, str] | None = None,
        vpc_cni_version: str = "",
        endpoint_url: str | None = None,
        retry_mode: str = DEFAULT_EC2_RETRY_MODE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout: float = DEFAULT_HTTP_TIMEOUT,
        read_timeout: float = DEFAULT_HTTP_TIMEOUT,
        credentials: Mapping[str, str] | None = None,
        detach_poll_seconds: float = 1.0,
        detach_poll_attempts: int = 60,
        clock: Callable[[], datetime] = _utcnow,
        observer: CallObserver | None = None,
    ) -> None:
        if retry_mode not in ("standard", "adaptive"):
            raise ValueError(f"retry_mode must be 'standard' or 'adaptive', not {retry_mode!r}")
        self.instance_id = instance_id
        self.cluster_name = cluster_name
        self.additional_tags = {
            k: v for k, v in (additional_tags or {}).items() if RESERVED_TAG_FRAGMENT not in k
        }
        self.stats = ApiStats(observer)
        self._clock = clock
        self._detach_wait = {"Delay": detach_poll_seconds, "MaxAttempts": detach_poll_attempts}
        #: ENIs this process created or meant to free but could not delete (EC2 refused even
        #: after botocore's retries).  The pool manager retries them every cycle instead of
        #: leaving them to the hourly leaked-ENI sweep.
        self.undeleted: set[str] = set()
        config = botocore.config.Config(
            region_name=region,
            # total_max_attempts, not max_attempts: botocore reads the latter as retries
            # after the first request, the former as every attempt (= AWS_MAX_ATTEMPTS).
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},
            user_agent_extra=f"amazon-vpc-cni-k8s/{vpc_cni_version or 'unknown'} vpccni",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        # A private session: boto3's default session is not thread-safe to build clients from.
        session = boto3.session.Session(**dict(credentials or {}))
        self._client = session.client("ec2", endpoint_url=endpoint_url, config=config)
        events = self._client.meta.events
        events.register("before-call.ec2", self.stats._before_call)
        events.register("before-send.ec2", self.stats._before_send)
        events.register("after-call.ec2", self.stats._after_call)
        events.register("after-call-error.ec2", self.stats._after_call_error)

    @classmethod
    def from_env(
        cls, instance_id: str, region: str, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Ec2Api:
        """Configured from aws-node's variables: CLUSTER_NAME, ADDITIONAL_ENI_TAGS,
        VPC_CNI_VERSION, HTTP_TIMEOUT (values under 10 ignored, as upstream), AWS_EC2_ENDPOINT /
        AWS_ENDPOINT_URL_EC2, and ipamd's VPCCNI_EC2_RETRY_MODE / VPCCNI_EC2_MAX_ATTEMPTS
        (read and validated by config.py, the one place that defines them; a bad value raises
        ``ConfigError``).  Keyword arguments win over the environment: the daemon passes its
        validated ``IpamdConfig`` values.  botocore's own AWS_RETRY_MODE / AWS_MAX_ATTEMPTS
        have no effect: the retry settings are always given explicitly."""
        env = os.environ if env is None else env
        timeout = DEFAULT_HTTP_TIMEOUT
        raw_timeout = env.get("HTTP_TIMEOUT", "")
        if raw_timeout.strip():
            try:
                timeout = max(DEFAULT_HTTP_TIMEOUT, float(raw_timeout))
            except ValueError as exc:
                raise ValueError(
                    f"HTTP_TIMEOUT must be a number of seconds, not {raw_timeout!r}"
                ) from exc
        kwargs.setdefault("cluster_name", env.get("CLUSTER_NAME", ""))
        kwargs.setdefault("additional_tags", parse_additional_tags(env.get("ADDITIONAL_ENI_TAGS")))
        kwargs.setdefault("vpc_cni_version", env.get("VPC_CNI_VERSION", ""))
        kwargs.setdefault("endpoint_url", endpoint_from_env(env))
        if "retry_mode" not in kwargs or "max_attempts" not in kwargs:
            mode, attempts = ec2_retry_from_env(env)
            kwargs.setdefault("retry_mode", mode)
            kwargs.setdefault("max_attempts", attempts)
        kwargs.setdefault("connect_timeout", timeout)
        kwargs.setdefault("read_timeout", timeout)
        return cls(instance_id, region, **kwargs)

    # -- plumbing ------------------------------------------------------------------------------
    def _call(self, method: str, **params: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = getattr(self._client, method)(**params)
        except botocore.exceptions.ClientError as exc:
            raise self._error(exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            action = self._client.meta.method_to_api_mapping.get(method, method)
            raise Ec2Error(Ec2ErrorKind.UNREACHABLE, type(exc).__name__, str(exc), action) from exc
        return result

    def _pages(self, method: str, **params: Any) -> Iterator[dict[str, Any]]:
        try:
            yield from self._client.get_paginator(method).paginate(**params)
        except botocore.exceptions.ClientError as exc:
            raise self._error(exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            action = self._client.meta.method_to_api_mapping.get(method, method)
            raise Ec2Error(Ec2ErrorKind.UNREACHABLE, type(exc).__name__, str(exc), action) from exc

    @staticmethod
    def _error(exc: botocore.exceptions.ClientError) -> Ec2Error:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        return Ec2Error(classify(code), code, str(err.get("Message", "")), exc.operation_name)

    # -- instance --------------------------------------------------------------------------------
    def describe_instance_type_limits(self, instance_type: str) -> InstanceTypeLimits:
        out = self._call("describe_instance_types", InstanceTypes=[instance_type])
        types = out.get("InstanceTypes", [])
        if not types:
            raise Ec2Error(
                Ec2ErrorKind.NOT_FOUND,
                "InvalidInstanceType",
                f"no such instance type {instance_type!r}",
                "DescribeInstanceTypes",
            )
        it = types[0]
        net = it.get("NetworkInfo", {})
        cards = tuple(
            sorted(
                (
                    NetworkCard(int(c["NetworkCardIndex"]), int(c["MaximumNetworkInterfaces"]))
                    for c in net.get("NetworkCards", [])
                ),
                key=lambda c: c.index,
            )
        ) or (NetworkCard(0, int(net.get("MaximumNetworkInterfaces", 0))),)
        return InstanceTypeLimits(
            instance_type=instance_type,
            max_enis=int(net.get("MaximumNetworkInterfaces", 0)),
            ipv4_per_eni=int(net.get("Ipv4AddressesPerInterface", 0)),
            ipv6_per_eni=int(net.get("Ipv6AddressesPerInterface", 0)),
            network_cards=cards,
            default_network_card=int(net.get("DefaultNetworkCardIndex", 0)),
            hypervisor=str(it.get("Hypervisor", "")),
            bare_metal=bool(it.get("BareMetal", False)),
        )

    def _used_device_indexes(self, network_card: int) -> set[int]:
        out = self._call("describe_instances", InstanceIds=[self.instance_id])
        used: set[int] = set()
        for reservation in out.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                for nic in inst.get("NetworkInterfaces", []):
                    att = nic.get("Attachment", {})
                    if int(att.get("NetworkCardIndex", 0)) == network_card:
                        used.add(int(att.get("DeviceIndex", 0)))
        return used

    # -- ENIs ------------------------------------------------------------------------------------
    def describe_enis(
        self, instance_id: str | None = None, eni_ids: Sequence[str] | None = None
    ) -> list[EniInfo]:
        """ENIs attached to ``instance_id`` (default: this instance), or those of ``eni_ids``.

        IDs go in a ``network-interface-id`` filter rather than ``NetworkInterfaceIds``: an ENI
        deleted meanwhile is then simply absent instead of failing the whole call with
        NotFound (upstream drops such IDs and asks again)."""
        if eni_ids is not None:
            if not eni_ids:
                return []
            filters = [{"Name": "network-interface-id", "Values": list(eni_ids)}]
        else:
            filters = [
                {"Name": "attachment.instance-id", "Values": [instance_id or self.instance_id]}
            ]
        return self._describe(filters)

    def _describe(self, filters: list[dict[str, Any]]) -> list[EniInfo]:
        enis: list[EniInfo] = []
        for page in self._pages(
            "describe_network_interfaces", Filters=filters, PaginationConfig={"PageSize": 1000}
        ):
            enis.extend(_eni_info(raw) for raw in page.get("NetworkInterfaces", []))
        return enis

    def creation_tags(self) -> dict[str, str]:
        """The tags a new ENI gets (reference 4.6)."""
        tags = dict(self.additional_tags)
        tags.update(self.ownership_tags())
        tags[TAG_CREATED_AT] = _rfc3339(self._clock())
        return tags

    def ownership_tags(self) -> dict[str, str]:
        """Tags every managed ENI must carry: instance id, cluster, additional tags."""
        tags = dict(self.additional_tags)
        tags[TAG_INSTANCE_ID] = self.instance_id
        if self.cluster_name:
            tags[TAG_CLUSTER_NAME] = self.cluster_name
            tags[TAG_ENI_OWNER] = ENI_OWNER
        return tags

    def create_eni(
        self,
        subnet_id: str,
        security_group_ids: Sequence[str],
        *,
        secondary_ip_count: int = 0,
        ipv4_prefix_count: int = 0,
        ipv6_address_count: int = 0,
    ) -> EniInfo:
        """CreateNetworkInterface with ipamd's description and tags; not attached yet."""
        params: dict[str, Any] = {
            "SubnetId": subnet_id,
            "Description": f"{DESCRIPTION_PREFIX}{self.instance_id}",
            "Groups": sorted(security_group_ids),
            "TagSpecifications": [
                {
                    "ResourceType": "network-interface",
                    "Tags": [
                        {"Key": k, "Value": v} for k, v in sorted(self.creation_tags().items())
                    ],
                }
            ],
        }
        # Only one count field: AWS refuses secondary addresses and prefixes in one request.
        if ipv4_prefix_count:
            params["Ipv4PrefixCount"] = ipv4_prefix_count
        elif secondary_ip_count:
            params["SecondaryPrivateIpAddressCount"] = secondary_ip_count
        if ipv6_address_count:
            params["Ipv6AddressCount"] = ipv6_address_count
        return _eni_info(self._call("create_network_interface", **params)["NetworkInterface"])

    def attach_eni(self, eni_id: str, network_card: int = 0) -> EniAttachment:
        """Attach at the lowest free device index on ``network_card`` (from DescribeInstances)."""
        used = self._used_device_indexes(network_card)
        free = next((i for i in range(MAX_DEVICE_INDEX) if i not in used), None)
        if free is None:
            raise Ec2Error(
                Ec2ErrorKind.ENI_LIMIT,
                "AttachmentLimitExceeded",
                f"no free device index below {MAX_DEVICE_INDEX}",
                "AttachNetworkInterface",
            )
        params: dict[str, Any] = {
            "NetworkInterfaceId": eni_id,
            "InstanceId": self.instance_id,
            "DeviceIndex": free,
        }
        if network_card:
            params["NetworkCardIndex"] = network_card
        out = self._call("attach_network_interface", **params)
        return EniAttachment(
            str(out["AttachmentId"]),
            self.instance_id,
            free,
            int(out.get("NetworkCardIndex", network_card)),
            "attaching",
            False,
        )

    def allocate_eni(
        self,
        subnet_id: str,
        security_group_ids: Sequence[str],
        *,
        secondary_ip_count: int = 0,
        ipv4_prefix_count: int = 0,
        ipv6_address_count: int = 0,
        network_card: int = 0,
    ) -> EniInfo:
        """Create, attach and mark DeleteOnTermination, as upstream's AllocENI.

        A failed attach deletes the new ENI; a failed attribute change detaches and deletes it.
        The error of the failing step is raised either way."""
        eni = self.create_eni(
            subnet_id,
            security_group_ids,
            secondary_ip_count=secondary_ip_count,
            ipv4_prefix_count=ipv4_prefix_count,
            ipv6_address_count=ipv6_address_count,
        )
        try:
            attachment = self.attach_eni(eni.eni_id, network_card)
        except Ec2Error:
            self._delete_quietly(eni.eni_id)
            raise
        try:
            self._call(
                "modify_network_interface_attribute",
                NetworkInterfaceId=eni.eni_id,
                Attachment={"AttachmentId": attachment.attachment_id, "DeleteOnTermination": True},
            )
        except Ec2Error:
            self._free_quietly(eni.eni_id, attachment.attachment_id)
            raise
        attached = EniAttachment(
            attachment.attachment_id,
            attachment.instance_id,
            attachment.device_index,
            attachment.network_card_index,
            attachment.status,
            True,
        )
        return _replace_attachment(eni, attached)

    def _delete_quietly(self, eni_id: str) -> None:
        try:
            self.delete_eni(eni_id)
        except Ec2Error:
            self.undeleted.add(eni_id)  # retried later; the caller sees the original error

    def _free_quietly(self, eni_id: str, attachment_id: str) -> None:
        try:
            self.free_eni(eni_id, attachment_id)
        except Ec2Error:
            self.undeleted.add(eni_id)  # as above

    def free_eni(self, eni_id: str, attachment_id: str | None = None) -> None:
        """Detach (if attached) and delete. An ENI that is already gone is not an error."""
        if attachment_id is None:
            found = self.describe_enis(eni_ids=[eni_id])
            if not found:
                return
            attachment_id = found[0].attachment.attachment_id if found[0].attachment else None
        if attachment_id is not None:
            try:
                self._call("detach_network_interface", AttachmentId=attachment_id)
            except Ec2Error as exc:
                if exc.kind is not Ec2ErrorKind.NOT_FOUND:
                    raise
            self._wait_available(eni_id)
        self.delete_eni(eni_id)

    def _wait_available(self, eni_id: str) -> None:
        # botocore's own waiter polls until the detach completes: deleting an ENI that is
        # still 'detaching' fails with InUse.
        waiter = self._client.get_waiter("network_interface_available")
        try:
            waiter.wait(NetworkInterfaceIds=[eni_id], WaiterConfig=self._detach_wait)
        except botocore.exceptions.WaiterError as exc:
            last = exc.last_response or {}
            code = str(last.get("Error", {}).get("Code", "DetachTimeout"))
            if classify(code) is Ec2ErrorKind.NOT_FOUND:
                return
            raise Ec2Error(classify(code), code, str(exc), "DescribeNetworkInterfaces") from exc

    def delete_eni(self, eni_id: str) -> None:
        """DeleteNetworkInterface; NotFound means already deleted and is not an error."""
        try:
            self._call("delete_network_interface", NetworkInterfaceId=eni_id)
        except Ec2Error as exc:
            if exc.kind is not Ec2ErrorKind.NOT_FOUND:
                raise

    # -- addresses -------------------------------------------------------------------------------
    def assign_private_ips(self, eni_id: str, count: int) -> tuple[str, ...]:
        """Assign ``count`` secondary IPv4 addresses; returns the new addresses."""
        out = self._call(
            "assign_private_ip_addresses",
            NetworkInterfaceId=eni_id,
            SecondaryPrivateIpAddressCount=count,
        )
        return tuple(a["PrivateIpAddress"] for a in out.get("AssignedPrivateIpAddresses", []))

    def unassign_private_ips(self, eni_id: str, addresses: Sequence[str]) -> None:
        if addresses:
            self._call(
                "unassign_private_ip_addresses",
                NetworkInterfaceId=eni_id,
                PrivateIpAddresses=list(addresses),
            )

    def assign_ipv4_prefixes(self, eni_id: str, count: int) -> tuple[str, ...]:
        """Assign ``count`` /28 prefixes; returns them as CIDR strings."""
        out = self._call(
            "assign_private_ip_addresses", NetworkInterfaceId=eni_id, Ipv4PrefixCount=count
        )
        return tuple(p["Ipv4Prefix"] for p in out.get("AssignedIpv4Prefixes", []))

    def unassign_ipv4_prefixes(self, eni_id: str, prefixes: Sequence[str]) -> None:
        if prefixes:
            self._call(
                "unassign_private_ip_addresses",
                NetworkInterfaceId=eni_id,
                Ipv4Prefixes=list(prefixes),
            )

    def assign_ipv6_prefixes(self, eni_id: str, count: int = 1) -> tuple[str, ...]:
        """Assign ``count`` /80 IPv6 prefixes (IPv6 mode); returns them as CIDR strings."""
        out = self._call("assign_ipv6_addresses", NetworkInterfaceId=eni_id, Ipv6PrefixCount=count)
        return tuple(out.get("AssignedIpv6Prefixes", []))

    # -- tags and leaks --------------------------------------------------------------------------
    def tag_eni(self, eni_id: str, current: Mapping[str, str]) -> dict[str, str]:
        """Add the ownership tags that are missing or wrong; returns what was written."""
        missing = {k: v for k, v in self.ownership_tags().items() if current.get(k) != v}
        if missing:
            self._create_tags(eni_id, missing)
        return missing

    def _create_tags(self, eni_id: str, tags: Mapping[str, str]) -> None:
        self._call(
            "create_tags",
            Resources=[eni_id],
            Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())],
        )

    def find_leaked_enis(self, vpc_id: str) -> list[EniInfo]:
        """Detached ENIs this CNI made in ``vpc_id`` (of this cluster, when CLUSTER_NAME is
        set) that are older than 5 minutes. An ENI without a readable createdAt tag gets one
        now and is left for a later sweep (it may belong to an older CNI still attaching it)."""
        filters = [
            {"Name": "tag-key", "Values": [TAG_INSTANCE_ID]},
            {"Name": "status", "Values": ["available"]},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ]
        if self.cluster_name:
            filters.append({"Name": f"tag:{TAG_CLUSTER_NAME}", "Values": [self.cluster_name]})
        now = self._clock()
        leaked: list[EniInfo] = []
        for eni in self._describe(filters):
            if not eni.description.startswith(DESCRIPTION_PREFIX):
                continue
            created = _parse_rfc3339(eni.tags.get(TAG_CREATED_AT, ""))
            if created is None:
                self._create_tags(eni.eni_id, {TAG_CREATED_AT: _rfc3339(now)})
                continue
            if now - created > LEAK_MIN_AGE:
                leaked.append(eni)
        return leaked

    def cleanup_leaked_enis(self, vpc_id: str) -> list[str]:
        """Delete the ENIs :meth:`find_leaked_enis` reports; returns the deleted IDs."""
        deleted = []
        for eni in self.find_leaked_enis(vpc_id):
            self.delete_eni(eni.eni_id)
            deleted.append(eni.eni_id)
        return deleted


# -- boto dict -> dataclass --------------------------------------------------------------------


def _eni_info(raw: Mapping[str, Any]) -> EniInfo:
    att = raw.get("Attachment")
    attachment = None
    if att and att.get("AttachmentId"):
        attachment = EniAttachment(
            attachment_id=str(att["AttachmentId"]),
            instance_id=str(att.get("InstanceId", "")),
            device_index=int(att.get("DeviceIndex", 0)),
            network_card_index=int(att.get("NetworkCardIndex", 0)),
            status=str(att.get("Status", "")),
            delete_on_termination=bool(att.get("DeleteOnTermination", False)),
        )
    privates = raw.get("PrivateIpAddresses", [])
    primary = str(raw.get("PrivateIpAddress", ""))
    tags = {str(t["Key"]): str(t.get("Value", "")) for t in raw.get("TagSet", [])}
    return EniInfo(
        eni_id=str(raw["NetworkInterfaceId"]),
        mac=str(raw.get("MacAddress", "")),
        subnet_id=str(raw.get("SubnetId", "")),
        vpc_id=str(raw.get("VpcId", "")),
        description=str(raw.get("Description", "")),
        interface_type=str(raw.get("InterfaceType", "interface")),
        status=str(raw.get("Status", "")),
        primary_ipv4=primary,
        secondary_ipv4s=tuple(
            str(p["PrivateIpAddress"])
            for p in privates
            if not p.get("Primary") and p.get("PrivateIpAddress") != primary
        ),
        ipv4_prefixes=tuple(str(p["Ipv4Prefix"]) for p in raw.get("Ipv4Prefixes", [])),
        ipv6_addresses=tuple(str(a["Ipv6Address"]) for a in raw.get("Ipv6Addresses", [])),
        ipv6_prefixes=tuple(str(p["Ipv6Prefix"]) for p in raw.get("Ipv6Prefixes", [])),
        security_group_ids=tuple(str(g["GroupId"]) for g in raw.get("Groups", [])),
        attachment=attachment,
        tags=MappingProxyType(tags),
    )


def _replace_attachment(eni: EniInfo, attachment: EniAttachment) -> EniInfo:
    return replace(eni, attachment=attachment, status="in-use")
