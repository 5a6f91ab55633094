"""``vpccni max-pods``: upstream's max-pods calculator, and its eni-max-pods.txt table.

Same flags and arithmetic as ``max-pods-calculator.sh`` from amazon-eks-ami (reference
section 5); prints just the number, so ``--max-pods=$(vpccni max-pods ...)`` works. ``--all``
prints ``<type> <max-pods>`` for every known type, as in upstream's ``misc/eni-max-pods.txt``.

Where the instance data comes from (``--data-source``, default ``auto``):

- ``auto``: EC2 DescribeInstanceTypes when the environment points at EC2 — an endpoint
  (``AWS_ENDPOINT_URL_EC2``/``AWS_ENDPOINT_URL``), credentials (``AWS_ACCESS_KEY_ID``,
  ``AWS_PROFILE``, web identity, container credentials) or ``--profile``; otherwise, and
  whenever that call fails or does not know the type, the AWS data moto ships (with a warning
  on stderr). Without such a hint we never start a credential search: on a machine with no
  AWS access it would only add seconds before the same bundled answer.
- ``ec2``: EC2 only; a failure is an error (instance-profile credentials are found this way).
- ``bundled``: moto's data only, no network.

EC2 calls use a 2 s connect / 5 s read timeout and at most 2 attempts so a dead endpoint
costs seconds, not minutes. boto3 is imported only when EC2 is actually asked. ``--all``
from EC2 lists the types of the client's region; the bundled data (like upstream's table,
built from 17 regions) spans regions.

Where we differ from the script, on purpose: ``--instance-type``, ``--instance-type-from-imds``
and ``--all`` exclude each other (the script silently prefers IMDS); ``--cni-max-eni`` must be
at least 1; ``--cni-version`` may carry a ``v`` prefix or a build suffix; a prefix-delegation
flag that cannot apply (CNI before 1.9.0, a non-Nitro type) gets a warning on stderr. The
numbers printed are the script's.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from vpccni.cli.main import CliError
from vpccni.ipamd import instance_types as it

#: Environment that says "this process is meant to talk to AWS" (see the module docstring).
EC2_HINT_VARIABLES = (
    "AWS_ENDPOINT_URL_EC2",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
EC2_CONNECT_TIMEOUT = 2.0
EC2_READ_TIMEOUT = 5.0
EC2_MAX_ATTEMPTS = 2
IMDS_TIMEOUT = 1.0
IMDS_ATTEMPTS = 2
#: when no region is configured anywhere (the type catalogue hardly differs between regions)
FALLBACK_REGION = "us-east-1"

EPILOG = """\
value: ENIs x slots + 2 (host-network pods), where slots = IPv4 per ENI - 1, x 16 with
prefix delegation (Nitro types, CNI >= 1.9.0), and ENIs = the default network card's, at
most --cni-max-eni, minus the primary ENI with custom networking. Capped at 110, or 250
above 30 vCPUs, unless --show-max-allowed.

data source: 'auto' asks EC2 DescribeInstanceTypes when AWS_ENDPOINT_URL_EC2,
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, web-identity or container credentials,
or --profile are set, and falls back to the AWS data bundled with moto (warning on
stderr) when EC2 fails or does not know the type; otherwise it reads the bundled data
only. 'ec2' always asks EC2 (e.g. with instance-profile credentials) and fails if it
cannot; 'bundled' never does.
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "max-pods",
        help="max pods for an instance type (upstream max-pods-calculator.sh)",
        description="Print the kubelet max-pods for an instance type, as upstream's "
        "max-pods-calculator.sh does, or the whole eni-max-pods.txt table with --all.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--instance-type", metavar="TYPE", help="EC2 instance type, e.g. m5.large")
    which.add_argument(
        "--instance-type-from-imds",
        action="store_true",
        help="read this instance's type from instance metadata (IMDSv2; honours "
        "AWS_EC2_METADATA_SERVICE_ENDPOINT)",
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="print '<type> <max-pods>' for every known type, like eni-max-pods.txt "
        "(never capped; the --cni-* flags apply)",
    )
    parser.add_argument(
        "--cni-version",
        metavar="X.Y.Z",
        help="VPC CNI version (required, as upstream): prefix delegation needs 1.9.0 or later",
    )
    parser.add_argument(
        "--cni-custom-networking-enabled",
        action="store_true",
        help="custom networking: the primary ENI holds no pods",
    )
    parser.add_argument(
        "--cni-prefix-delegation-enabled",
        action="store_true",
        help="prefix delegation: 16 addresses per slot (Nitro types, CNI 1.9.0 or later)",
    )
    parser.add_argument(
        "--cni-max-eni", type=_positive_int, metavar="N", help="use at most N ENIs (MAX_ENI)"
    )
    parser.add_argument(
        "--show-max-allowed",
        action="store_true",
        help="print the address capacity instead of the recommended value (no 110/250 cap)",
    )
    parser.add_argument("--profile", help="AWS profile for DescribeInstanceTypes")
    parser.add_argument(
        "--data-source",
        choices=("auto", "ec2", "bundled"),
        default="auto",
        help="where instance data comes from (default: auto, see below)",
    )
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    pd = bool(args.cni_prefix_delegation_enabled)
    if args.cni_version is None and (not args.all or pd):
        raise CliError(
            "--cni-version is required (the VPC CNI version, e.g. 1.19.0): "
            "prefix delegation needs 1.9.0 or later",
            exit_code=2,
        )
    cni_version = args.cni_version or "0.0"  # --all without PD: the version changes nothing
    try:
        pd_supported = it.cni_supports_prefix_delegation(cni_version)
    except ValueError as exc:
        raise CliError(f"--cni-version: {exc}", exit_code=2) from None
    if pd and not pd_supported:
        _warn(f"VPC CNI {cni_version} has no prefix delegation (1.9.0 or later); ignoring it")

    source = DataSource(args, os.environ)

    def compute(info: it.InstanceTypeInfo, show_max_allowed: bool) -> int:
        return it.calculate_max_pods(
            info,
            cni_version=cni_version,
            custom_networking=args.cni_custom_networking_enabled,
            prefix_delegation=pd,
            max_eni=args.cni_max_eni,
            show_max_allowed=show_max_allowed,
        ).value

    if args.all:
        # eni-max-pods.txt is the address capacity; the 110/250 ceiling is a per-node
        # recommendation the calculator adds, so the table is never capped.
        lines = [f"{info.instance_type} {compute(info, True)}" for info in source.all_types()]
        sys.stdout.write("\n".join(lines) + "\n")
        return 0

    instance_type = args.instance_type
    if args.instance_type_from_imds:
        instance_type, region = imds_instance_type()
        source.imds_region = region
    info = source.get(instance_type)
    if pd and pd_supported and not info.is_nitro:
        _warn(f"{info.instance_type} is not a Nitro instance type: no prefix delegation")
    print(compute(info, args.show_max_allowed))
    return 0


def _warn(message: str) -> None:
    print(f"vpccni max-pods: warning: {message}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- instance data ------------------------------------------------------------------------------


class DataSource:
    """EC2 DescribeInstanceTypes or the bundled data, per ``--data-source``."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str]) -> None:
        self.profile: str | None = args.profile
        mode: str = args.data_source
        if mode == "auto":
            configured = bool(self.profile) or any(env.get(v) for v in EC2_HINT_VARIABLES)
            mode = "ec2-then-bundled" if configured else "bundled"
        self.mode = mode
        #: region learned from instance metadata; wins over the configured one, as upstream
        #: exports AWS_DEFAULT_REGION from the identity document
        self.imds_region: str | None = None

    def get(self, instance_type: str) -> it.InstanceTypeInfo:
        if self.mode == "bundled":
            return _bundled(instance_type, "the bundled AWS data")
        try:
            return self._ec2_one(instance_type)
        except it.UnknownInstanceTypeError as exc:
            if self.mode == "ec2":
                raise CliError(_one_line(exc)) from None
            # EC2 answers for its region only; the bundled data spans regions.
            why = f"EC2 ({_one_line(exc)})"
        except Ec2UnavailableError as exc:
            if self.mode == "ec2":
                raise CliError(str(exc)) from None
            why = str(exc)
        info = _bundled(instance_type, "EC2 or the bundled AWS data")
        _warn(f"{why}; using the AWS data bundled with moto")
        return info

    def all_types(self) -> Iterable[it.InstanceTypeInfo]:
        if self.mode != "bundled":
            try:
                return self._ec2_all()
            except Ec2UnavailableError as exc:
                if self.mode == "ec2":
                    raise CliError(str(exc)) from None
                _warn(f"{exc}; using the AWS data bundled with moto")
        try:
            return list(it.iter_bundled())
        except OSError as exc:
            raise CliError(f"bundled instance-type data unreadable: {_one_line(exc)}") from None

    # -- EC2 ------------------------------------------------------------------------------------
    def _client(self) -> Any:
        import boto3  # noqa: PLC0415  (~200 ms: only when EC2 is really asked)
        import botocore.config  # noqa: PLC0415
        import botocore.exceptions  # noqa: PLC0415

        try:
            session = boto3.Session(profile_name=self.profile)
            region = self.imds_region or session.region_name or FALLBACK_REGION
            config = botocore.config.Config(
                connect_timeout=EC2_CONNECT_TIMEOUT,
                read_timeout=EC2_READ_TIMEOUT,
                retries={"max_attempts": EC2_MAX_ATTEMPTS, "mode": "standard"},
            )
            # The endpoint comes from AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL through botocore.
            return session.client("ec2", region_name=region, config=config)
        except botocore.exceptions.BotoCoreError as exc:
            raise Ec2UnavailableError(f"EC2 not usable: {_one_line(exc)}") from exc

    def _ec2_one(self, instance_type: str) -> it.InstanceTypeInfo:
        import botocore.exceptions  # noqa: PLC0415

        client = self._client()
        try:
            out = client.describe_instance_types(InstanceTypes=[instance_type])
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidInstanceType":
                raise it.UnknownInstanceTypeError(
                    f"unknown EC2 instance type {instance_type!r} in {client.meta.region_name}"
                ) from None
            raise Ec2UnavailableError(_ec2_failed(exc)) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise Ec2UnavailableError(_ec2_failed(exc)) from exc
        entries = [e for e in out.get("InstanceTypes", []) if "NetworkInfo" in e]
        if not entries:
            raise it.UnknownInstanceTypeError(f"EC2 has no network data for {instance_type!r}")
        return it.parse_instance_type(entries[0])

    def _ec2_all(self) -> list[it.InstanceTypeInfo]:
        import botocore.exceptions  # noqa: PLC0415

        client = self._client()
        found: dict[str, it.InstanceTypeInfo] = {}
        try:
            for page in client.get_paginator("describe_instance_types").paginate():
                for entry in page.get("InstanceTypes", []):
                    if "NetworkInfo" in entry:
                        info = it.parse_instance_type(entry)
                        found[info.instance_type] = info
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise Ec2UnavailableError(_ec2_failed(exc)) from exc
        # Sorted bytewise, as Go's sort.Strings orders eni-max-pods.txt.
        return [found[name] for name in sorted(found)]


class Ec2UnavailableError(Exception):
    """DescribeInstanceTypes could not answer (unreachable, no credentials, refused)."""


def _ec2_failed(exc: BaseException) -> str:
    return f"EC2 DescribeInstanceTypes failed: {_one_line(exc)}"


def _bundled(instance_type: str, where: str) -> it.InstanceTypeInfo:
    try:
        return it.bundled(instance_type)
    except it.UnknownInstanceTypeError:
        raise CliError(_unknown(instance_type, where)) from None
    except OSError as exc:
        raise CliError(f"bundled instance-type data unreadable: {_one_line(exc)}") from None


def _unknown(instance_type: str, where: str) -> str:
    message = f"unknown EC2 instance type {instance_type!r} (not in {where})"
    try:
        close = difflib.get_close_matches(instance_type, it.bundled_types(), n=3)
    except OSError:
        close = []
    if close:
        message += f"; did you mean {', '.join(close)}?"
    return message


# -- instance metadata --------------------------------------------------------------------------


def imds_instance_type() -> tuple[str, str | None]:
    """This instance's type and region, through botocore's IMDSv2 fetcher.

    The endpoint is botocore's: AWS_EC2_METADATA_SERVICE_ENDPOINT or the shared config's
    ec2_metadata_service_endpoint, else 169.254.169.254. Short timeouts: off EC2 the
    link-local address does not answer at all."""
    import botocore.exceptions  # noqa: PLC0415
    import botocore.session  # noqa: PLC0415
    import botocore.utils  # noqa: PLC0415

    unreachable = (
        botocore.utils.IMDSFetcher._RETRIES_EXCEEDED_ERROR_CLS,
        botocore.utils.BadIMDSRequestError,
    )
    session = botocore.session.get_session()
    config: dict[str, Any] = {}
    for key in ("ec2_metadata_service_endpoint", "ec2_metadata_service_endpoint_mode"):
        value = session.get_config_variable(key)
        if value:
            config[key] = value
    try:
        fetcher = botocore.utils.IMDSFetcher(
            timeout=IMDS_TIMEOUT, num_attempts=IMDS_ATTEMPTS, config=config
        )
        token = fetcher._fetch_metadata_token()

        def fetch(path: str) -> str | None:
            # botocore retries every non-200 by default; a 404 is an answer, not a failure.
            response = fetcher._get_request(
                f"latest/meta-data/{path}", lambda r: int(r.status_code) >= 500, token
            )
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise CliError(
                    f"instance metadata {path}: HTTP {response.status_code} "
                    f"from {fetcher.get_base_url()}"
                )
            return str(response.text).strip()

        instance_type = fetch("instance-type")
        if not instance_type:
            raise CliError(f"instance metadata at {fetcher.get_base_url()} has no instance-type")
        region = fetch("placement/region")
        if not region:
            zone = fetch("placement/availability-zone")
            # the zone minus its letter is the region (older metadata has no placement/region)
            region = zone[:-1] if zone else None
        return instance_type, region
    except unreachable as exc:
        endpoint = config.get("ec2_metadata_service_endpoint", "http://169.254.169.254/")
        raise CliError(
            f"instance metadata unreachable at {endpoint} ({type(exc).__name__}); "
            "use --instance-type off EC2"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise CliError(f"instance metadata: {_one_line(exc)}") from None
