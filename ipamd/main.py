"""``vpccni-ipamd``: the node daemon.

Start-up order (upstream's aws-k8s-agent): configuration validated from the environment (a
bad value: every problem on stderr, exit 2, nothing touched: no socket, no EC2 call); logging;
node init (metadata, EC2, host networking, checkpoint); node SNAT rules (``snat_sync``: synced
once, then re-synced by a watcher thread as the VPC CIDRs change); then the gRPC socket,
metrics and introspection, and the pool manager loop.  Node init is retried while its failures are
transient (EC2 or metadata unreachable, throttled), as the liveness probe would otherwise
restart us in a loop; a checkpoint that cannot be restored is fatal (exit 1) so the pods'
addresses are never overwritten.

SIGTERM/SIGINT: stop attaching and detaching ENIs, stop serving, keep the checkpoint (and the
SNAT rules: pods keep their egress while the daemon restarts).  With
VPCCNI_PLUGIN_SERVER_SOCKET_PATH, the plugin server is started once the gRPC socket serves,
restarted when it exits, and stopped (SIGTERM) on the way out
(:mod:`vpccni.ipamd.plugin_server_supervisor`).

The environment contract is docs/ipamd-configuration.md; the ``VPCCNI_*`` variables exist so
several simulated nodes can run side by side (socket, state directory, intervals).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType

from vpccni.ipamd import rpc
from vpccni.ipamd.backend import IpamdBackend
from vpccni.ipamd.checkpoint import CheckpointError
from vpccni.ipamd.checkpoint import CheckpointState
from vpccni.ipamd.config import ConfigError
from vpccni.ipamd.config import IpamdConfig
from vpccni.ipamd.ec2 import Ec2Error
from vpccni.ipamd.host_net import HostNetError
from vpccni.ipamd.introspect import HttpServerHandle
from vpccni.ipamd.introspect import serve_introspection
from vpccni.ipamd.introspect_source import DaemonIntrospection
from vpccni.ipamd.metadata import InstanceMetadata
from vpccni.ipamd.metadata import MetadataError
from vpccni.ipamd.metrics import Metrics
from vpccni.ipamd.metrics import serve_metrics
from vpccni.ipamd.plugin_server_supervisor import PluginServerSupervisor
from vpccni.ipamd.plugin_server_supervisor import log_file_for
from vpccni.ipamd.plugin_server_supervisor import server_log_level
from vpccni.ipamd.pool import InitError
from vpccni.ipamd.pool import PoolManager
from vpccni.ipamd.snat_sync import SnatSync
from vpccni.ipamd.snat_sync import check_env as check_snat_env

log = logging.getLogger("vpccni.ipamd")

EXIT_CONFIG = 2
EXIT_INIT = 1
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"
INIT_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)
SERVER_GRACE_SECONDS = 2.0
#: gRPC worker threads.  Requests waiting for a shared checkpoint write hold a worker, and
#: the more requests wait together the fewer writes they need, so a burst of pod starts on
#: a node (kubelet runs them in parallel) should not queue behind a small pool.
RPC_WORKERS = 16
LOOP_JOIN_SECONDS = 5.0


#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8
#: Arenas for the whole process.  glibc gives each thread that allocates its own arena (up
#: to 8 per CPU); with 16 gRPC workers plus the pool, metrics and introspection threads,
#: memory freed in one arena cannot serve another and RSS creeps up.  Python's own small
#: object allocator sits on top anyway, so two arenas cost no measurable speed.
MALLOC_ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only (not musl)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas (MALLOC_ARENA_MAX, unless the environment sets it); call
    before any thread starts.  Does nothing off glibc."""
    libc = _libc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def release_startup_memory() -> None:
    """Hand the memory node init used and freed back to the OS: botocore's parse of the EC2
    model and endpoint files leaves megabytes of free heap that a daemon running for months
    would otherwise keep resident."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def setup_logging(config: IpamdConfig) -> None:
    """AWS_VPC_K8S_CNI_LOG_FILE: ``stdout``, ``stderr`` or a path (its directory created);
    a path that cannot be opened falls back to stderr, with a warning there."""
    root = logging.getLogger("vpccni")
    for old in list(root.handlers):
        root.removeHandler(old)
    target = config.log_file
    handler: logging.Handler
    problem = ""
    if target.lower() == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    elif target.lower() == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            handler = logging.FileHandler(target)
        except OSError as exc:
            handler = logging.StreamHandler(sys.stderr)
            problem = f"cannot log to {target} ({exc}); logging to stderr"
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(config.log_level, logging.DEBUG))
    root.propagate = False
    if problem:
        log.warning("%s", problem)
    for warning in config.warnings:
        log.warning("configuration: %s", warning)


class Daemon:
    def __init__(self, config: IpamdConfig) -> None:
        self.config = config
        self.metrics = Metrics(version=config.cni_version)
        self.pool = PoolManager(
            config, InstanceMetadata.from_env(os.environ), self.metrics, os.environ
        )
        self.stopping = threading.Event()
        self._servers: list[HttpServerHandle] = []
        self.snat: SnatSync | None = None
        self.plugin_server: PluginServerSupervisor | None = None

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping.set()
        # Stop attaching/detaching at once, even while node init or a cycle still runs.
        self.pool.stop()

    def _init(self) -> bool:
        attempt = 0
        while not self.stopping.is_set():
            try:
                self.pool.init()
                return True
            except (Ec2Error, MetadataError, HostNetError, OSError) as exc:
                if isinstance(exc, CheckpointError):
                    raise
                delay = INIT_RETRY_SECONDS[min(attempt, len(INIT_RETRY_SECONDS) - 1)]
                attempt += 1
                log.error("node init failed (%s); retrying in %gs", exc, delay)
                self.metrics.error("nodeInit")
                self.stopping.wait(delay)
        return False

    def _restore_fresh_node(self) -> None:
        """The datastore writes nothing before ``restore()`` (so nothing can overwrite the
        pods' allocations in an unread checkpoint); node init restores only when a checkpoint
        exists, so a fresh node is restored here, empty, before anything may change it."""
        ds = self.pool.datastore
        if ds is not None and not ds.restored:
            log.info("fresh node: starting with an empty checkpoint")
            ds.restore(CheckpointState())

    def run(self) -> int:
        started = time.monotonic()
        cfg = self.config
        try:
            if not self._init():
                return 0
            self._restore_fresh_node()
        except (InitError, CheckpointError) as exc:
            log.critical("node init failed: %s", exc)
            self.metrics.startup_finished(
                time.monotonic() - started, success=False, failure_reason=type(exc).__name__
            )
            print(f"vpccni-ipamd: node init failed: {exc}", file=sys.stderr)
            return EXIT_INIT
        ds = self.pool.datastore
        assert ds is not None  # noqa: S101 - init succeeded
        # Before serving: a pod started now already has egress through the node.
        self.snat = SnatSync(
            cfg, self.pool.metadata, self.pool.primary_eni, self.metrics, os.environ
        )
        self.snat.start()
        release_startup_memory()
        backend = IpamdBackend(ds, self.pool, cfg, self.pool.vpc_cidrs, self.metrics)
        if not cfg.disable_metrics:
            self._servers.append(serve_metrics(self.metrics, cfg.metrics_bind_address))
        if not cfg.disable_introspection:
            source = DaemonIntrospection(cfg, lambda: {0: ds})
            self._servers.append(serve_introspection(source, cfg.introspection_bind_address))
        loop = threading.Thread(target=self.pool.run, name="pool", daemon=True)
        loop.start()
        server = rpc.serve(cfg.socket_path, backend, max_workers=RPC_WORKERS)
        self.metrics.startup_finished(time.monotonic() - started)
        log.info(
            "serving on unix://%s (%.2fs after start)", cfg.socket_path, time.monotonic() - started
        )
        # Before the conflist: kubelet starts pods once it exists (the launcher falls back
        # to running the plugin itself while the server is still preloading).
        self._start_plugin_server()
        status = 0 if self._write_conflist() else 1
        while status == 0 and not self.stopping.wait(0.5):
            pass
        backend.set_ready(False)
        if self.plugin_server is not None:
            self.plugin_server.stop()
        server.stop(SERVER_GRACE_SECONDS).wait()
        self.snat.stop()
        for handle in self._servers:
            handle.stop()
        # Every datastore change is already in the checkpoint: no reason to wait for an EC2
        # call (and botocore's back-off) to finish; the leaked-ENI sweep covers a half-made ENI.
        loop.join(timeout=LOOP_JOIN_SECONDS)
        if loop.is_alive():
            log.warning("pool manager still busy after %gs; exiting anyway", LOOP_JOIN_SECONDS)
        try:
            os.unlink(cfg.socket_path)
        except FileNotFoundError:
            pass
        log.info("stopped; checkpoint kept at %s", cfg.backing_store)
        return status

    def _start_plugin_server(self) -> None:
        """VPCCNI_PLUGIN_SERVER_SOCKET_PATH: start and supervise ``vpccni plugin-server``,
        now that our socket serves (its idle children connect to it ahead of a request)."""
        cfg = self.config
        if not cfg.plugin_server_socket_path:
            return
        self.plugin_server = PluginServerSupervisor(
            cfg.plugin_server_socket_path,
            cfg.socket_path,
            log_file_for(cfg.log_file),
            extra_args=["--log-level", server_log_level(cfg.log_level)],
        )
        self.plugin_server.start()

    @staticmethod
    def _write_conflist() -> bool:
        """As upstream's aws-node entrypoint: once ipamd serves, render 10-aws.conflist into
        HOST_CNI_CONFDIR_PATH (when set), which is what makes kubelet mark the node's network
        ready.  A conflist that cannot be rendered is fatal there too."""
        conf_dir = os.environ.get("HOST_CNI_CONFDIR_PATH")
        if not conf_dir:
            return True
        from vpccni.conf import render  # noqa: PLC0415 - only when asked to write it

        try:
            path = render.render_to(conf_dir, os.environ)
        except (render.RenderError, OSError) as exc:
            log.error("cannot write the CNI configuration into %s: %s", conf_dir, exc)
            return False
        log.info("wrote %s", path)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vpccni-ipamd",
        description="The vpccni node daemon (Amazon VPC CNI ipamd). Configured by the "
        "aws-node environment variables; see docs/ipamd-configuration.md.",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the environment and exit"
    )
    args = parser.parse_args(argv)
    try:
        config = IpamdConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"vpccni-ipamd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    snat_problems = check_snat_env(os.environ)
    if snat_problems:
        for problem in snat_problems:
            print(f"vpccni-ipamd: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        for warning in config.warnings:
            print(f"vpccni-ipamd: warning: {warning}", file=sys.stderr)
        return 0
    limit_malloc_arenas()
    setup_logging(config)
    daemon = Daemon(config)
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
