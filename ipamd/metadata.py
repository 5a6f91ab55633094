"""Instance metadata (IMDSv2) for ipamd, through botocore's metadata fetcher.

The endpoint is botocore's: ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (or the shared config's
``ec2_metadata_service_endpoint``), else ``http://169.254.169.254/``. The session token is
fetched once and renewed before it expires or when the service answers 401 (tokens are bound
to the instance and die with an IMDS restart). A 404 on an optional per-ENI key (no prefixes, no
IPv6) means "none", as on AWS; a 404 on a required key is a :class:`MetadataError`.

Thread safety: one :class:`InstanceMetadata` may be shared; the token is guarded by a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import botocore.exceptions
import botocore.session
import botocore.utils

TOKEN_TTL_SECONDS = 21600
# Renew a little before AWS would refuse the token, never at the edge.
_TOKEN_MARGIN_SECONDS = 60.0
_MACS = "latest/meta-data/network/interfaces/macs/"


class MetadataError(Exception):
    """Instance metadata could not be read (unreachable, or a required key is missing)."""


class MetadataNotFoundError(MetadataError):
    """The metadata service answered 404 for a required key."""


@dataclass(frozen=True)
class InstanceIdentity:
    instance_id: str
    instance_type: str
    region: str
    availability_zone: str
    local_ipv4: str
    primary_mac: str


@dataclass(frozen=True)
class EniMetadata:
    mac: str
    device_number: int
    network_card_index: int
    interface_id: str
    local_ipv4s: tuple[str, ...]  # primary first, as IMDS lists them
    ipv4_prefixes: tuple[str, ...]
    ipv6s: tuple[str, ...]
    ipv6_prefixes: tuple[str, ...]
    subnet_id: str
    subnet_ipv4_cidr: str
    subnet_ipv6_cidrs: tuple[str, ...]
    vpc_ipv4_cidrs: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    vpc_ipv6_cidrs: tuple[str, ...] = ()

    @property
    def primary_ipv4(self) -> str:
        return self.local_ipv4s[0] if self.local_ipv4s else ""


class ImdsFetcher(botocore.utils.IMDSFetcher):  # type: ignore[misc]
    """botocore's IMDSv2 fetcher, with GET of any path and a cached, renewed token."""

    _TOKEN_TTL = str(TOKEN_TTL_SECONDS)

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float = 2.0,
        num_attempts: int = 3,
        user_agent: str | None = None,
    ) -> None:
        config: dict[str, Any] = {}
        if endpoint is None:
            # The botocore session resolves AWS_EC2_METADATA_SERVICE_ENDPOINT and the config file.
            endpoint = botocore.session.get_session().get_config_variable(
                "ec2_metadata_service_endpoint"
            )
        if endpoint:
            config["ec2_metadata_service_endpoint"] = endpoint
        super().__init__(
            timeout=timeout, num_attempts=num_attempts, config=config, user_agent=user_agent
        )
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_expires = 0.0

    def _token_now(self, renew: bool = False) -> str | None:
        with self._lock:
            if renew or self._token is None or time.monotonic() >= self._token_expires:
                self._token = self._fetch_metadata_token()
                self._token_expires = time.monotonic() + TOKEN_TTL_SECONDS - _TOKEN_MARGIN_SECONDS
            return self._token

    @staticmethod
    def _retry_server_errors(response: Any) -> bool:
        # botocore's default retries every non-200, 404 included; a 404 is an answer here.
        return int(response.status_code) >= 500

    def fetch(self, path: str) -> str | None:
        """Body of ``latest/meta-data/<path>``, or None for 404."""
        url = f"latest/meta-data/{path}"
        try:
            response = self._get_request(url, self._retry_server_errors, self._token_now())
            if response.status_code == 401:
                response = self._get_request(
                    url, self._retry_server_errors, self._token_now(renew=True)
                )
        except self._RETRIES_EXCEEDED_ERROR_CLS as exc:
            raise MetadataError(f"instance metadata unreachable at {self._base_url}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise MetadataError(f"instance metadata: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise MetadataError(f"instance metadata {path}: HTTP {response.status_code}")
        return str(response.text)


class InstanceMetadata:
    """What ipamd reads from instance metadata: the instance and its attached ENIs."""

    def __init__(self, fetcher: ImdsFetcher | None = None) -> None:
        self._fetcher = fetcher or ImdsFetcher()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> InstanceMetadata:
        """From ``env``'s AWS_EC2_METADATA_SERVICE_ENDPOINT; with no ``env``, botocore resolves
        the endpoint from the process environment and config file."""
        endpoint = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") if env is not None else None
        return cls(ImdsFetcher(endpoint=endpoint, **kwargs))

    def _required(self, path: str) -> str:
        value = self._fetcher.fetch(path)
        if value is None:
            raise MetadataNotFoundError(f"instance metadata has no {path}")
        return value.strip()

    def _list(self, path: str) -> tuple[str, ...]:
        value = self._fetcher.fetch(path)
        if value is None:
            return ()
        return tuple(line.strip().rstrip("/") for line in value.splitlines() if line.strip())

    def identity(self) -> InstanceIdentity:
        zone = self._required("placement/availability-zone")
        region = self._fetcher.fetch("placement/region")
        return InstanceIdentity(
            instance_id=self._required("instance-id"),
            instance_type=self._required("instance-type"),
            # placement/region is newer than the zone; the zone minus its letter is the region.
            region=region.strip() if region else zone[:-1],
            availability_zone=zone,
            local_ipv4=self._required("local-ipv4"),
            primary_mac=self._required("mac"),
        )

    def macs(self) -> tuple[str, ...]:
        """MACs of the attached ENIs (an ENI still attaching is not listed yet)."""
        return self._list(_MACS.removeprefix("latest/meta-data/"))

    def eni(self, mac: str) -> EniMetadata:
        base = f"network/interfaces/macs/{mac}/"
        return EniMetadata(
            mac=mac,
            device_number=int(self._required(base + "device-number")),
            # Absent on instances older than network cards: card 0.
            network_card_index=int(
                (self._fetcher.fetch(base + "network-card-index") or "0").strip() or 0
            ),
            interface_id=self._required(base + "interface-id"),
            local_ipv4s=self._list(base + "local-ipv4s"),
            ipv4_prefixes=self._list(base + "ipv4-prefix"),
            ipv6s=self._list(base + "ipv6s"),
            ipv6_prefixes=self._list(base + "ipv6-prefix"),
            subnet_id=self._required(base + "subnet-id"),
            subnet_ipv4_cidr=self._required(base + "subnet-ipv4-cidr-block"),
            subnet_ipv6_cidrs=self._list(base + "subnet-ipv6-cidr-blocks"),
            vpc_ipv4_cidrs=self._list(base + "vpc-ipv4-cidr-blocks"),
            security_group_ids=self._list(base + "security-group-ids"),
            vpc_ipv6_cidrs=self._list(base + "vpc-ipv6-cidr-blocks"),
        )

    def enis(self) -> list[EniMetadata]:
        """Every attached ENI, by network card then device number."""
        enis = [self.eni(mac) for mac in self.macs()]
        return sorted(enis, key=lambda e: (e.network_card_index, e.device_number))
