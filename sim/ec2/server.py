"""The EC2 emulator: moto's server app behind a WSGI layer that adds AWS semantics and faults."""

from __future__ import annotations

import io
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from moto.core.base_backend import BackendDict
from moto.core.exceptions import ServiceException
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.exceptions import FilterNotImplementedError
from moto.ec2.models import ec2_backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import WSGIRequestHandler
from werkzeug.serving import make_server

from vpccni.sim.ec2 import attachments
from vpccni.sim.ec2 import handlers
from vpccni.sim.ec2.faults import FaultConfig
from vpccni.sim.ec2.model import adopt
from vpccni.sim.ec2.views import EniView
from vpccni.sim.ec2.views import instance_enis
from vpccni.sim.ec2.wire import Ec2Error
from vpccni.sim.ec2.wire import Ec2Request
from vpccni.sim.ec2.wire import parse_form
from vpccni.sim.ec2.wire import parse_request
from vpccni.sim.ec2.wire import render_error
from vpccni.sim.ec2.wire import render_result

log = logging.getLogger(__name__)

FAULTS_PATH = "/vpccni-sim/faults"
ATTACHED_EVENT = "AttachmentAttached"
_READ_ONLY_PREFIXES = ("Describe", "Get", "List")

HANDLERS: dict[str, handlers.Handler] = {
    "CreateNetworkInterface": handlers.create_network_interface,
    "DeleteNetworkInterface": handlers.delete_network_interface,
    "DescribeNetworkInterfaces": handlers.describe_network_interfaces,
    "AssignPrivateIpAddresses": handlers.assign_private_ip_addresses,
    "UnassignPrivateIpAddresses": handlers.unassign_private_ip_addresses,
    "AssignIpv6Addresses": handlers.assign_ipv6_addresses,
    "UnassignIpv6Addresses": handlers.unassign_ipv6_addresses,
    "AttachNetworkInterface": attachments.attach_network_interface,
    "DetachNetworkInterface": attachments.detach_network_interface,
    "ModifyNetworkInterfaceAttribute": attachments.modify_network_interface_attribute,
    "TerminateInstances": attachments.terminate_instances,
    "RunInstances": attachments.run_instances,
}

WsgiResponse = tuple[int, list[tuple[str, str]], bytes]
StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class RequestStats:
    """Every EC2 request the emulator received, by action and outcome.

    Recorded as each request is answered, throttled ones included, so a test sees what a
    client really sent: botocore's retries of a throttled call are separate requests here.
    Outcomes: ``ok`` (HTTP < 300), ``throttled`` (injected RequestLimitExceeded) and
    ``failed`` (any other error answer).  Thread-safe; :meth:`reset` starts from zero.
    """

    OUTCOMES = ("ok", "throttled", "failed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def record(self, action: str, outcome: str) -> None:
        if outcome not in self.OUTCOMES:
            raise ValueError(f"outcome must be one of {self.OUTCOMES}, not {outcome!r}")
        with self._lock:
            self._counts[(action, outcome)] = self._counts.get((action, outcome), 0) + 1

    def _by_action(self, outcomes: tuple[str, ...]) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for (action, outcome), n in self._counts.items():
                if outcome in outcomes:
                    out[action] = out.get(action, 0) + n
            return out

    def counts(self) -> dict[str, int]:
        """Requests per action, whatever their outcome."""
        return self._by_action(self.OUTCOMES)

    def throttled(self) -> dict[str, int]:
        """Requests per action answered with the injected RequestLimitExceeded."""
        return self._by_action(("throttled",))

    def failed(self) -> dict[str, int]:
        """Requests per action answered with any other error."""
        return self._by_action(("failed",))

    def by_outcome(self) -> dict[tuple[str, str], int]:
        """``{(action, outcome): count}``."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


class Ec2Emulator:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-west-2",
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.region = region
        self.account_id = DEFAULT_ACCOUNT_ID
        self.lock = threading.RLock()
        self.faults = FaultConfig(seed)
        #: Requests received, by action and outcome (not cleared by :meth:`reset`).
        self.stats = RequestStats()
        self._rng = random.Random(seed)
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._subscribers: list[Callable[[str], None]] = []
        self._timers: set[threading.Timer] = set()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._server is not None:
            return
        self._server = make_server(
            self.host, self.port, self.wsgi_app, threaded=True, request_handler=_QuietHandler
        )
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ec2-emulator", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        self._cancel_timers()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Ec2Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def backend(self) -> Any:
        # Looked up each time: a moto reset replaces the backend objects.
        return ec2_backends[self.account_id][self.region]

    def reset(self) -> None:
        """Wipe all moto state (like ``POST /moto-api/reset``) and clear faults."""
        with self.lock:
            self._cancel_timers()
            BackendDict.reset()
            self.faults.clear()

    def seed(self, seed: int) -> None:
        """Make address choice and throttling repeatable from here on."""
        with self.lock:
            self._rng.seed(seed)
            self.faults.seed(seed)

    # -- observers and views ---------------------------------------------------------------
    def subscribe(self, callback: Callable[[str], None]) -> None:
        with self.lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[str], None]) -> None:
        with self.lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def _notify(self, action: str) -> None:
        with self.lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(action)
            except Exception:  # a broken observer must not break the API
                log.exception("EC2 emulator subscriber failed on %s", action)

    def describe_eni_state(self, instance_id: str) -> list[EniView]:
        """ENIs attached to ``instance_id`` (card, then device order), attaching ones included."""
        with self.lock:
            return instance_enis(self.backend, instance_id)

    # -- asynchronous attachment -----------------------------------------------------------
    def _schedule_attach(self, eni_id: str, delay: float) -> None:
        timer = threading.Timer(delay, self._attach_due, args=(eni_id,))
        timer.daemon = True
        with self.lock:
            self._timers.add(timer)
        timer.start()

    def _attach_due(self, eni_id: str) -> None:
        with self.lock:
            self._timers = {t for t in self._timers if t.is_alive()}
            eni = self.backend.enis.get(eni_id)
            if eni is None or eni.instance is None:
                return  # detached or deleted while attaching
            remaining = adopt(eni).attach_ready_at - time.monotonic()
        if remaining > 0:
            self._schedule_attach(eni_id, remaining)
            return
        self._notify(ATTACHED_EVENT)

    def _cancel_timers(self) -> None:
        with self.lock:
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()

    # -- WSGI ------------------------------------------------------------------------------
    def wsgi_app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(FAULTS_PATH):
            status, headers, body = self._faults_endpoint(environ)
        elif path.startswith("/moto-api/reset"):
            self.reset()
            status, headers, body = 200, [("Content-Type", "application/json")], b'{"status": "ok"}'
        else:
            status, headers, body = self._ec2(environ)
        start_response(f"{status} {_reason(status)}", headers)
        return [body]

    def _faults_endpoint(self, environ: dict[str, Any]) -> WsgiResponse:
        json_header = [("Content-Type", "application/json")]
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                doc = json.loads(_read_body(environ) or b"{}")
                if not isinstance(doc, dict):
                    raise ValueError("expected a JSON object")
                self.faults.apply(doc)
            except (ValueError, TypeError) as exc:
                return 400, json_header, json.dumps({"error": str(exc)}).encode()
        return 200, json_header, json.dumps(self.faults.snapshot()).encode()

    def _ec2(self, environ: dict[str, Any]) -> WsgiResponse:
        body = _read_body(environ)
        form = parse_form(body, environ.get("QUERY_STRING", ""))
        request = parse_request(form)
        if request is None:
            return self._call_moto(environ, body)
        action = request.action
        delay = self.faults.latency_for(action)
        if delay > 0:
            time.sleep(delay)  # outside the lock: slow calls must not serialize the others
        if self.faults.should_throttle(action):
            self.stats.record(action, "throttled")
            return _error(Ec2Error("RequestLimitExceeded", "Request limit exceeded.", 503))
        try:
            response = self._dispatch(environ, body, request, form)
        except BaseException:
            self.stats.record(action, "failed")
            raise
        self.stats.record(action, "ok" if response[0] < 300 else "failed")
        return response

    def _dispatch(
        self,
        environ: dict[str, Any],
        body: bytes,
        request: Ec2Request,
        form: list[tuple[str, str]],
    ) -> WsgiResponse:
        action = request.action
        handler = HANDLERS.get(action)
        with self.lock:
            try:
                if handler is None:
                    response = self._call_moto(environ, body)
                else:
                    response = self._handle(handler, environ, body, request, form)
            except Ec2Error as exc:
                response = _error(exc)
            except ServiceException as exc:
                response = _error(Ec2Error(str(exc.code), str(exc.message)))
            except FilterNotImplementedError as exc:
                response = _error(Ec2Error("InvalidParameterValue", str(exc)))
        if response[0] < 300 and not action.startswith(_READ_ONLY_PREFIXES):
            self._notify(action)
        return response

    def _handle(
        self,
        handler: handlers.Handler,
        environ: dict[str, Any],
        body: bytes,
        request: Ec2Request,
        form: list[tuple[str, str]],
    ) -> WsgiResponse:
        action, params = request.action, request.params
        ctx = handlers.Context(
            backend=self.backend,
            rng=self._rng,
            attach_delay=self.faults.attach_delay,
            schedule_attach=self._schedule_attach,
            params=params,
            form=form,
        )
        outcome = handler(ctx)
        if isinstance(outcome, handlers.Passthrough):
            if outcome.form is not None:
                body = urlencode(outcome.form).encode()
            try:
                response = self._call_moto(environ, body)
            finally:
                if outcome.cleanup is not None:
                    outcome.cleanup()
            if response[0] < 300 and outcome.after is not None:
                outcome.after()
            return response
        status, headers, text = render_result(action, outcome, request_id=str(uuid.uuid4()))
        return status, list(headers.items()), text.encode()

    def _call_moto(self, environ: dict[str, Any], body: bytes) -> WsgiResponse:
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO(body)
        env["CONTENT_LENGTH"] = str(len(body))
        if env.get("REQUEST_METHOD") == "POST":
            env["QUERY_STRING"] = ""  # the parameters are all in the body now
        captured: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> None:
            captured["status"] = int(status.split()[0])
            captured["headers"] = headers

        chunks = self._moto(env, start_response)
        try:
            data = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        return captured["status"], headers, data


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    return stream.read(length) if stream is not None and length > 0 else b""


def _error(exc: Ec2Error) -> WsgiResponse:
    status, headers, body = render_error(exc)
    return status, list(headers.items()), body.encode()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
