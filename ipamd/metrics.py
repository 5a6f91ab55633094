"""ipamd's Prometheus metrics, under upstream's names (reference section 9).

Each :class:`Metrics` owns its own ``CollectorRegistry``, never the process-global one, so
several daemons (simulated nodes) or tests in one process do not clash.  :func:`serve_metrics`
serves ``/metrics`` on ``127.0.0.1:61678`` by default.  Upstream listens on all interfaces;
we bind loopback unless the operator asks otherwise (the daemon passes its
``metrics_bind_address`` setting, ``host:port`` or ``unix:<path>``), because the scrape
exposes pod and ENI names to anyone who can reach the port.

Upstream names, types and labels kept (Go's client names counters without a ``_total``
suffix, and so do we for every ``awscni_*`` counter, so existing dashboards and the
cni-metrics-helper keep matching):

====================================== ========= ==========================================
awscni_ipamd_error_count               counter   fn
awscni_ipamd_action_inprogress         gauge     fn
awscni_eni_max                         gauge
awscni_ip_max                          gauge
awscni_reconcile_count                 counter   fn
awscni_add_ip_req_count                counter
awscni_del_ip_req_count                counter   reason (PodDeleted, SetupNSFailed)
awscni_aws_api_latency_ms              summary   api, error ("true"/"false"), status
awscni_aws_api_error_count             counter   api, error (the error code)
awscni_ec2api_req_count                counter   fn
awscni_ec2api_error_count              counter   fn
awscni_eni_allocated                   gauge
awscni_total_ip_addresses              gauge
awscni_assigned_ip_addresses           gauge
awscni_force_removed_enis              counter
awscni_force_removed_ips               counter
awscni_total_ipv4_prefixes             gauge
awscni_assigned_ip_per_cidr            gauge     cidr
awscni_no_available_ip_addresses       counter
awscni_assigned_ip_per_eni             gauge     eni
awscni_ipamd_startup_duration_seconds  histogram success, with_api_server, failure_reason
awscni_build_info                      gauge     version, revision, goversion (=1)
====================================== ========= ==========================================

``goversion`` keeps its name for dashboards and carries the Python version.  Not carried
over: ``awscni_pod_eni_error_count``, ``awscni_aws_utils_error_count``, the node-init
histogram and the connmark metrics belong to features this daemon does not have yet.

Our additions (standard ``_total`` suffix on counters):

``vpccni_cooldown_ip_addresses`` (gauge)
    released addresses still in ``IP_COOLDOWN_PERIOD``; upstream counts them as available.
``vpccni_available_ip_addresses`` (gauge)
    addresses a pod could get now: total - assigned - cooling.
``vpccni_allocation_failures_total{reason}`` (counter)
    every refused allocation by :class:`vpccni.core.ipam.FailureReason` value, so "failed to
    assign an IP address" has a cause on the dashboard too.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import Summary
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString as _untyped_float_to_go

from vpccni.core.ipam import FailureReason
from vpccni.ipamd.introspect import HttpServerHandle
from vpccni.ipamd.introspect import serve_http

DEFAULT_BIND = "127.0.0.1:61678"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upstream ``awscni_del_ip_req_count`` reasons.
DEL_POD_DELETED = "PodDeleted"
DEL_SETUP_NS_FAILED = "SetupNSFailed"

#: Failures where the datastore had no address to give: upstream counts each of them in
#: ``awscni_no_available_ip_addresses``; the others (bad request, ipamd down) are not pool
#: conditions.
_NO_ADDRESS_REASONS = frozenset(
    {
        FailureReason.POOL_EMPTY_ATTACHING,
        FailureReason.POOL_EMPTY,
        FailureReason.MAX_PODS,
        FailureReason.SUBNET_EXHAUSTED,
        FailureReason.EC2_THROTTLED,
        FailureReason.COOLDOWN,
    }
)

_UPSTREAM_PREFIX = "awscni_"
#: Go's float spelling (``+Inf``, ``1.0``...); prometheus-client leaves it unannotated.
_float_to_go: Callable[[float], str] = _untyped_float_to_go


class Metrics:
    """The daemon's metrics.  Thread-safe (prometheus-client's own locks)."""

    def __init__(self, version: str = "", revision: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._errors = Counter(
            "awscni_ipamd_error_count",
            "The number of errors encountered in ipamd",
            ["fn"],
            registry=r,
        )
        self._in_progress = Gauge(
            "awscni_ipamd_action_inprogress",
            "The number of ipamd actions in progress",
            ["fn"],
            registry=r,
        )
        self._eni_max = Gauge(
            "awscni_eni_max", "The maximum number of ENIs that can be attached", registry=r
        )
        self._ip_max = Gauge(
            "awscni_ip_max", "The maximum number of IP addresses that can be allocated", registry=r
        )
        self._reconcile = Counter(
            "awscni_reconcile_count",
            "The number of times ipamd reconciles on ENIs and IP/prefix addresses",
            ["fn"],
            registry=r,
        )
        self._add_req = Counter(
            "awscni_add_ip_req_count", "The number of add IP address requests", registry=r
        )
        self._del_req = Counter(
            "awscni_del_ip_req_count",
            "The number of delete IP address requests",
            ["reason"],
            registry=r,
        )
        self._api_latency = Summary(
            "awscni_aws_api_latency_ms",
            "AWS API call latency in ms",
            ["api", "error", "status"],
            registry=r,
        )
        self._api_errors = Counter(
            "awscni_aws_api_error_count",
            "The number of times AWS API returns an error",
            ["api", "error"],
            registry=r,
        )
        self._ec2_req = Counter(
            "awscni_ec2api_req_count",
            "The number of requests made to EC2 APIs by CNI",
            ["fn"],
            registry=r,
        )
        self._ec2_err = Counter(
            "awscni_ec2api_error_count",
            "The number of failed EC2 APIs requests",
            ["fn"],
            registry=r,
        )
        self._enis = Gauge("awscni_eni_allocated", "The number of ENIs allocated", registry=r)
        self._total = Gauge(
            "awscni_total_ip_addresses", "The total number of IP addresses", registry=r
        )
        self._assigned = Gauge(
            "awscni_assigned_ip_addresses",
            "The number of IP addresses assigned to pods",
            registry=r,
        )
        self._forced_enis = Counter(
            "awscni_force_removed_enis", "The number of ENIs force removed", registry=r
        )
        self._forced_ips = Counter(
            "awscni_force_removed_ips", "The number of IPs force removed", registry=r
        )
        self._prefixes = Gauge(
            "awscni_total_ipv4_prefixes", "The total number of IPv4 prefixes", registry=r
        )
        self._per_cidr = Gauge(
            "awscni_assigned_ip_per_cidr",
            "The total number of IP addresses assigned per cidr",
            ["cidr"],
            registry=r,
        )
        self._no_ip = Counter(
            "awscni_no_available_ip_addresses",
            "The number of pod IP assignments that fail due to no available IP addresses",
            registry=r,
        )
        self._per_eni = Gauge(
            "awscni_assigned_ip_per_eni",
            "The number of allocated ips partitioned by eni",
            ["eni"],
            registry=r,
        )
        self._startup = Histogram(
            "awscni_ipamd_startup_duration_seconds",
            "Time taken for ipamd to start, from process start to serving requests",
            ["success", "with_api_server", "failure_reason"],
            buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
            registry=r,
        )
        self._build_info = Gauge(
            "awscni_build_info",
            "A metric with a constant '1' value labeled by version, revision and the runtime",
            ["version", "revision", "goversion"],
            registry=r,
        )
        self._build_info.labels(version, revision, f"python{platform.python_version()}").set(1)
        self._cooldown = Gauge(
            "vpccni_cooldown_ip_addresses",
            "Released IP addresses still in IP_COOLDOWN_PERIOD (not available to pods)",
            registry=r,
        )
        self._available = Gauge(
            "vpccni_available_ip_addresses",
            "IP addresses a pod could be given now (total - assigned - cooling down)",
            registry=r,
        )
        self._failures = Counter(
            "vpccni_allocation_failures_total",
            "Refused address allocations by reason",
            ["reason"],
            registry=r,
        )
        # Reasons known up front appear at 0, so rate() works before the first failure.
        for reason in FailureReason:
            self._failures.labels(reason.value)
        self._per_eni_keys: set[str] = set()
        self._per_cidr_keys: set[str] = set()

    # -- requests ------------------------------------------------------------------------
    def add_request(self) -> None:
        """An AddNetwork request arrived."""
        self._add_req.inc()

    def del_request(self, reason: str = DEL_POD_DELETED) -> None:
        """A DelNetwork request arrived (``PodDeleted`` or ``SetupNSFailed``)."""
        self._del_req.labels(reason).inc()

    def allocation_failed(self, reason: FailureReason | str) -> None:
        """An allocation was refused for ``reason``."""
        value = FailureReason(reason)
        self._failures.labels(value.value).inc()
        if value in _NO_ADDRESS_REASONS:
            self._no_ip.inc()

    # -- ipamd internals -----------------------------------------------------------------
    def error(self, fn: str) -> None:
        """An ipamd function ``fn`` failed (awscni_ipamd_error_count)."""
        self._errors.labels(fn).inc()

    @contextmanager
    def action_in_progress(self, fn: str) -> Iterator[None]:
        """Mark ``fn`` (nodeInit, increaseDatastorePool, decreaseDatastorePool,
        nodeIPPoolReconcile, ...) as running for the duration of the block."""
        gauge = self._in_progress.labels(fn)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def reconciled(self, fn: str) -> None:
        """A reconcile step ``fn`` ran (awscni_reconcile_count)."""
        self._reconcile.labels(fn).inc()

    def set_limits(self, max_enis: int, max_ips: int) -> None:
        """ENIs and addresses this node may hold (maxENI - unmanaged; x IPs per ENI)."""
        self._eni_max.set(max_enis)
        self._ip_max.set(max_ips)

    def force_removed_eni(self, count: int = 1) -> None:
        self._forced_enis.inc(count)

    def force_removed_ips(self, count: int = 1) -> None:
        self._forced_ips.inc(count)

    def startup_finished(
        self,
        seconds: float,
        *,
        success: bool = True,
        with_api_server: bool = False,
        failure_reason: str = "",
    ) -> None:
        """ipamd finished starting (or gave up) after ``seconds``."""
        self._startup.labels(
            str(success).lower(), str(with_api_server).lower(), failure_reason
        ).observe(seconds)

    # -- EC2 -----------------------------------------------------------------------------
    def ec2_call(
        self, api: str, latency_ms: float, error: str | None = None, status: int = 200
    ) -> None:
        """One EC2 API call (after botocore's retries): ``latency_ms`` its wall time,
        retries included, ``error`` the AWS error code (``RequestLimitExceeded``, ...) or
        None, ``status`` the HTTP status of the last attempt (0: no HTTP answer).

        The signature is ``vpccni.ipamd.ec2.CallObserver``: the daemon hands this method
        to ``Ec2Api(observer=...)`` so each call is recorded as it finishes, with its own
        latency and code (totals carried over later would lose both)."""
        failed = error is not None
        self._api_latency.labels(api, str(failed).lower(), str(status)).observe(latency_ms)
        self._ec2_req.labels(api).inc()
        if error is not None:
            self._api_errors.labels(api, error).inc()
            self._ec2_err.labels(api).inc()

    @contextmanager
    def timed_ec2_call(self, api: str) -> Iterator[None]:
        """Time the block as one call of ``api``; an exception's ``response`` (botocore's
        ClientError) supplies the error code and status."""
        start = time.monotonic()
        try:
            yield
        except Exception as exc:
            response = getattr(exc, "response", None) or {}
            code = response.get("Error", {}).get("Code") or type(exc).__name__
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            self.ec2_call(api, (time.monotonic() - start) * 1000, code, int(status))
            raise
        self.ec2_call(api, (time.monotonic() - start) * 1000)

    # -- the pool ------------------------------------------------------------------------
    def set_pool(
        self,
        total: int,
        assigned: int,
        cooldown: int,
        enis: int,
        prefixes: int = 0,
        per_eni: Mapping[str, int] | None = None,
        per_cidr: Mapping[str, int] | None = None,
    ) -> None:
        """The datastore's current figures.  ``per_eni``/``per_cidr`` (assigned addresses by
        ENI id / by CIDR) replace the previous ones: a detached ENI's series disappears."""
        self._total.set(total)
        self._assigned.set(assigned)
        self._cooldown.set(cooldown)
        self._available.set(max(total - assigned - cooldown, 0))
        self._enis.set(enis)
        self._prefixes.set(prefixes)
        if per_eni is not None:
            self._per_eni_keys = _replace(self._per_eni, self._per_eni_keys, per_eni)
        if per_cidr is not None:
            self._per_cidr_keys = _replace(self._per_cidr, self._per_cidr_keys, per_cidr)

    # -- exposition ----------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition format (0.0.4), with Go's naming for upstream counters."""
        return render_text(self.registry.collect())


def _replace(gauge: Gauge, old: set[str], new: Mapping[str, int]) -> set[str]:
    for gone in old - set(new):
        gauge.remove(gone)
    for key, value in new.items():
        gauge.labels(key).set(value)
    return set(new)


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render_text(families: Iterable[Metric]) -> bytes:
    """Prometheus text format 0.0.4.

    prometheus-client's own ``generate_latest`` appends ``_total`` to every counter and adds
    ``_created`` series; Go's client (upstream) does neither, and dashboards query the bare
    names.  So ``awscni_*`` counters are written under their bare names, ``_created``
    samples are dropped everywhere, and everything else is written as the library would."""
    out: list[str] = []
    for family in families:
        name, kind = family.name, family.type
        sample_rename: dict[str, str] = {}
        if kind == "counter":
            exposed = name if name.startswith(_UPSTREAM_PREFIX) else f"{name}_total"
            sample_rename[f"{name}_total"] = exposed
            name = exposed
        elif kind == "unknown":
            kind = "untyped"
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            sample_name = sample_rename.get(sample.name, sample.name)
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(sample.labels.items()))
            label_text = f"{{{labels}}}" if labels else ""
            out.append(f"{sample_name}{label_text} {_float_to_go(sample.value)}\n")
    return "".join(out).encode()


def serve_metrics(metrics: Metrics, bind: str = DEFAULT_BIND) -> HttpServerHandle:
    """Serve ``/metrics`` for ``metrics`` on ``bind`` (``host:port`` or ``unix:<path>``;
    default loopback, see the module docstring)."""

    def scrape() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, metrics.render()

    return serve_http(bind, {"/metrics": scrape}, "metrics", ["/metrics"])
