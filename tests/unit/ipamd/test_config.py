"""ipamd configuration from the aws-node environment: defaults, upstream rules, clear errors."""

from __future__ import annotations

import pytest

from vpccni.ipamd.config import ConfigError
from vpccni.ipamd.config import IpamdConfig


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        IpamdConfig.from_env(env)
    return info.value.problems


def test_empty_environment_is_an_ipv4_node_with_upstream_defaults() -> None:
    c = IpamdConfig.from_env({})
    assert (c.warm_eni_target, c.warm_ip_target, c.minimum_ip_target) == (1, 0, 0)
    assert c.max_eni == -1
    assert c.ip_cooldown_period == 30
    assert (c.enable_ipv4, c.enable_ipv6, c.enable_prefix_delegation) == (True, False, False)
    assert c.eni_mtu == c.pod_mtu == 9001
    assert c.veth_prefix == "eni"
    assert c.backing_store == "/var/run/aws-node/ipam.json"
    assert c.socket_path == "/var/run/aws-node/ipamd.sock"
    assert c.metrics_bind_address == "127.0.0.1:61678"
    assert c.introspection_bind_address == "127.0.0.1:61679"
    assert (c.pool_interval, c.reconcile_interval, c.decrease_interval) == (5, 60, 30)
    assert (c.eni_min_lifetime, c.subnet_exhausted_backoff, c.reconcile_cooldown) == (60, 120, 60)
    assert (c.ec2_retry_mode, c.http_timeout) == ("standard", 10)
    assert not c.warm_ip_targets_defined
    assert c.warnings == ()


def test_upstream_manifest_values_are_read() -> None:
    c = IpamdConfig.from_env(
        {
            "WARM_IP_TARGET": "5",
            "MINIMUM_IP_TARGET": "10",
            "MAX_ENI": "2",
            "IP_COOLDOWN_PERIOD": "0",
            "AWS_VPC_K8S_CNI_EXTERNALSNAT": "True",
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": "10.1.0.0/16, 192.168.0.0/24",
            "POD_MTU": "1500",
            "AWS_VPC_K8S_CNI_LOGLEVEL": "DEBUG",
            "ADDITIONAL_ENI_TAGS": '{"team":"net"}',
            "CLUSTER_NAME": "prod",
            "MY_NODE_NAME": "ip-10-0-0-1",
            "VPC_CNI_VERSION": "v1.23.1",
        }
    )
    assert (c.warm_ip_target, c.minimum_ip_target, c.max_eni) == (5, 10, 2)
    assert c.warm_ip_targets_defined
    assert c.ip_cooldown_period == 0
    assert c.external_snat is True
    assert c.exclude_snat_cidrs == ("10.1.0.0/16", "192.168.0.0/24")
    assert (c.eni_mtu, c.pod_mtu) == (9001, 1500)
    assert c.log_level == "debug"
    assert dict(c.additional_eni_tags) == {"team": "net"}
    assert (c.cluster_name, c.node_name, c.cni_version) == ("prod", "ip-10-0-0-1", "v1.23.1")


def test_bad_value_names_variable_value_and_accepted_values() -> None:
    assert problems({"WARM_IP_TARGET": "abc"}) == [
        "WARM_IP_TARGET='abc': expected a non-negative integer"
    ]


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        {
            "WARM_ENI_TARGET": "-1",
            "MINIMUM_IP_TARGET": "ten",
            "ENABLE_PREFIX_DELEGATION": "yes",
            "AWS_VPC_ENI_MTU": "100",
            "AWS_VPC_K8S_CNI_VETHPREFIX": "eth",
            "VPCCNI_EC2_RETRY_MODE": "legacy",
        }
    )
    assert len(found) == 6
    text = "\n".join(found)
    for name in (
        "WARM_ENI_TARGET='-1'",
        "MINIMUM_IP_TARGET='ten'",
        "ENABLE_PREFIX_DELEGATION='yes': expected true or false",
        "AWS_VPC_ENI_MTU='100': expected an integer in [576, 9001]",
        "AWS_VPC_K8S_CNI_VETHPREFIX='eth'",
        "VPCCNI_EC2_RETRY_MODE='legacy': expected one of standard, adaptive",
    ):
        assert name in text
    # The exception's own message carries every problem too, for the daemon's exit line.
    with pytest.raises(ConfigError, match="6 problem"):
        IpamdConfig.from_env(
            {
                "WARM_ENI_TARGET": "-1",
                "MINIMUM_IP_TARGET": "ten",
                "ENABLE_PREFIX_DELEGATION": "yes",
                "AWS_VPC_ENI_MTU": "100",
                "AWS_VPC_K8S_CNI_VETHPREFIX": "eth",
                "VPCCNI_EC2_RETRY_MODE": "legacy",
            }
        )


@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_bad_warm_eni_target_is_refused_not_mapped_to_1(value: str) -> None:
    # Upstream silently uses 1; we refuse (docs/ipamd-configuration.md, "stricter").
    assert problems({"WARM_ENI_TARGET": value}) == [
        f"WARM_ENI_TARGET={value!r}: expected a non-negative integer"
    ]


def test_empty_value_means_unset() -> None:
    assert IpamdConfig.from_env({"WARM_ENI_TARGET": "", "WARM_IP_TARGET": " "}).warm_eni_target == 1


@pytest.mark.parametrize(("value", "expected"), [("0", -1), ("-1", -1), ("1", 1), ("4", 4)])
def test_max_eni_below_1_means_instance_limit(value: str, expected: int) -> None:
    assert IpamdConfig.from_env({"MAX_ENI": value}).max_eni == expected


def test_max_eni_must_be_an_integer() -> None:
    assert problems({"MAX_ENI": "many"}) == ["MAX_ENI='many': expected an integer"]


@pytest.mark.parametrize("value", ["-1", "1.5", "soon"])
def test_ip_cooldown_period_is_a_non_negative_integer(value: str) -> None:
    assert problems({"IP_COOLDOWN_PERIOD": value}) == [
        f"IP_COOLDOWN_PERIOD={value!r}: expected a non-negative integer"
    ]


def test_prefix_delegation_needs_a_target() -> None:
    (problem,) = problems({"ENABLE_PREFIX_DELEGATION": "true"})
    assert "WARM_PREFIX_TARGET" in problem
    assert "at least one of them > 0" in problem
    for name in ("WARM_IP_TARGET", "WARM_PREFIX_TARGET", "MINIMUM_IP_TARGET"):
        c = IpamdConfig.from_env({"ENABLE_PREFIX_DELEGATION": "true", name: "1"})
        assert c.enable_prefix_delegation


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {
                "ENABLE_IPv4": "true",
                "ENABLE_IPv6": "true",
                "ENABLE_PREFIX_DELEGATION": "true",
                "WARM_PREFIX_TARGET": "1",
            },
            "both true",
        ),
        ({"ENABLE_IPv4": "false"}, "both false"),
        ({"ENABLE_IPv6": "true"}, "expected ENABLE_PREFIX_DELEGATION=true"),
        (
            {
                "ENABLE_IPv6": "true",
                "ENABLE_PREFIX_DELEGATION": "true",
                "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": "true",
            },
            "custom networking off",
        ),
    ],
)
def test_address_family_rules(env: dict[str, str], fragment: str) -> None:
    (problem,) = problems(env)
    assert fragment in problem


def test_ipv6_alone_selects_ipv6_mode() -> None:
    c = IpamdConfig.from_env({"ENABLE_IPv6": "true", "ENABLE_PREFIX_DELEGATION": "true"})
    assert (c.enable_ipv4, c.enable_ipv6) == (False, True)


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({"AWS_VPC_ENI_MTU": "576"}, True),
        ({"AWS_VPC_ENI_MTU": "575"}, False),
        ({"AWS_VPC_ENI_MTU": "9002"}, False),
        ({"POD_MTU": "9001"}, True),
        ({"POD_MTU": "1279", "ENABLE_IPv6": "true", "ENABLE_PREFIX_DELEGATION": "true"}, False),
        ({"POD_MTU": "1280", "ENABLE_IPv6": "true", "ENABLE_PREFIX_DELEGATION": "true"}, True),
    ],
)
def test_mtu_ranges(env: dict[str, str], ok: bool) -> None:
    if ok:
        IpamdConfig.from_env(env)
    else:
        (problem,) = problems(env)
        assert "expected an integer in [" in problem


def test_pod_mtu_defaults_to_eni_mtu() -> None:
    assert IpamdConfig.from_env({"AWS_VPC_ENI_MTU": "1500"}).pod_mtu == 1500


@pytest.mark.parametrize("prefix", ["eth", "lo", "vlan", "toolong", "a/b"])
def test_bad_veth_prefixes(prefix: str) -> None:
    (problem,) = problems({"AWS_VPC_K8S_CNI_VETHPREFIX": prefix})
    assert problem.startswith(f"AWS_VPC_K8S_CNI_VETHPREFIX={prefix!r}")


def test_state_dir_moves_the_checkpoint_unless_backing_store_is_set() -> None:
    assert (
        IpamdConfig.from_env({"VPCCNI_STATE_DIR": "/tmp/n1"}).backing_store == "/tmp/n1/ipam.json"
    )
    c = IpamdConfig.from_env(
        {"VPCCNI_STATE_DIR": "/tmp/n1", "AWS_VPC_K8S_CNI_BACKING_STORE": "/x/y.json"}
    )
    assert c.backing_store == "/x/y.json"


def test_simulated_nodes_can_shorten_timers_and_move_the_socket() -> None:
    c = IpamdConfig.from_env(
        {
            "VPCCNI_IPAMD_SOCKET": "/tmp/n1/ipamd.sock",
            "VPCCNI_POOL_INTERVAL": "0.1",
            "VPCCNI_ENI_MIN_LIFETIME": "0",
            "VPCCNI_METRICS_BIND_ADDRESS": "127.0.0.1:0",
            "VPCCNI_EC2_RETRY_MODE": "Adaptive",
            "VPCCNI_EC2_MAX_ATTEMPTS": "3",
        }
    )
    assert (c.socket_path, c.pool_interval, c.eni_min_lifetime) == ("/tmp/n1/ipamd.sock", 0.1, 0)
    assert (c.ec2_retry_mode, c.ec2_max_attempts) == ("adaptive", 3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VPCCNI_POOL_INTERVAL", "0"),
        ("VPCCNI_RECONCILE_INTERVAL", "-5"),
        ("VPCCNI_DECREASE_INTERVAL", "nan"),
        ("VPCCNI_IPAMD_SOCKET", "relative.sock"),
        ("INTROSPECTION_BIND_ADDRESS", "localhost"),
        ("VPCCNI_METRICS_BIND_ADDRESS", "127.0.0.1:99999"),
        ("AWS_VPC_K8S_PLUGIN_LOG_FILE", "stdout"),
        ("POD_SECURITY_GROUP_ENFORCING_MODE", "loose"),
        ("AWS_VPC_K8S_CNI_LOGLEVEL", "verbose"),
        ("ADDITIONAL_ENI_TAGS", "team=net"),
        ("ADDITIONAL_ENI_TAGS", '{"n": 1}'),
        ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.0.0.0/8,not-a-cidr"),
        ("VPCCNI_EC2_MAX_ATTEMPTS", "0"),
    ],
)
def test_each_bad_value_is_named(name: str, value: str) -> None:
    (problem,) = problems({name: value})
    assert problem.startswith(f"{name}=")
    assert "expected" in problem


def test_unix_introspection_address_is_accepted() -> None:
    c = IpamdConfig.from_env({"INTROSPECTION_BIND_ADDRESS": "unix:/run/introspect.sock"})
    assert c.introspection_bind_address == "unix:/run/introspect.sock"


def test_lenient_upstream_behaviours_kept_with_warnings() -> None:
    c = IpamdConfig.from_env(
        {
            "HTTP_TIMEOUT": "3",
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": "10.0.0.0/8,2001:db8::/64",
            "ADDITIONAL_ENI_TAGS": '{"node.k8s.amazonaws.com/x":"y","team":"net"}',
        }
    )
    assert c.http_timeout == 10
    assert c.exclude_snat_cidrs == ("10.0.0.0/8",)
    assert dict(c.additional_eni_tags) == {"team": "net"}
    assert len(c.warnings) == 3
    assert any("HTTP_TIMEOUT" in w for w in c.warnings)
