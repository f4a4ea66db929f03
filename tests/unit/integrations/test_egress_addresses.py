"""Egress address rules: which resolved addresses a call may connect to, judged
without a network (a fake resolver stands in for DNS)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import anyio
import httpcore
import pytest

from bhiv.integrations import egress
from bhiv.integrations.egress import EgressPolicy, EgressRefused


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
        ("::", "unspecified"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00:ec2::254", "private"),  # AWS's IPv6 metadata address
        ("192.0.0.192", "private"),  # Oracle Cloud's metadata address
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("fe80::1", "link-local (cloud metadata)"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.100.100.200", "carrier-grade NAT"),  # Alibaba Cloud's metadata address
        ("224.0.0.1", "multicast"),
        ("224.0.1.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),
        ("198.51.100.7", "private"),  # documentation range
        ("93.184.215.14", None),
        ("2606:4700::6810:84e5", None),
        ("8.8.8.8", None),
    ],
)
def test_blocked_kind(address: str, kind: str | None) -> None:
    assert egress.blocked_kind(ipaddress.ip_address(address)) == kind


def fake_dns(table: dict[str, list[str]]) -> egress.Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return table[host]
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            raise OSError(f"no such host {host}") from None

    return resolve


DNS = fake_dns(
    {
        "partner.example": ["93.184.215.14"],
        "rebind.example": ["127.0.0.1"],
        "mixed.example": ["93.184.215.14", "10.0.0.7"],
        "metadata.example": ["169.254.169.254"],
        "mapped.example": ["::ffff:192.168.0.1"],
        "lab.example": ["10.20.0.5"],
        "agents.bhiv.svc": ["10.96.0.12"],
    }
)


def policy(
    hosts: list[str],
    networks: Sequence[str] = (),
    platform: frozenset[tuple[str, int]] = frozenset(),
) -> EgressPolicy:
    return EgressPolicy(hosts, egress.parse_networks(networks), platform, DNS)


def addresses(p: EgressPolicy, host: str, port: int = 443) -> list[str]:
    return anyio.run(p.addresses, host, port)


class TestResolvedAddresses:
    def test_a_public_answer_is_used_as_resolved(self) -> None:
        assert addresses(policy(["*"]), "partner.example") == ["93.184.215.14"]

    @pytest.mark.parametrize(
        "host", ["rebind.example", "mixed.example", "metadata.example", "mapped.example"]
    )
    def test_an_allowed_name_that_resolves_inward_is_refused(self, host: str) -> None:
        with pytest.raises(EgressRefused) as refused:
            addresses(policy(["*", host]), host)
        assert "BHIV_EGRESS_ALLOWED_NETWORKS" in str(refused.value)
        assert "10.0.0.7" not in str(refused.value) and "169.254" not in str(
            refused.value
        )  # no DNS oracle

    def test_an_explicitly_allowed_network_is_reachable(self) -> None:
        assert addresses(policy(["lab.example"], ["10.20.0.0/16"]), "lab.example") == ["10.20.0.5"]
        with pytest.raises(EgressRefused):
            addresses(policy(["*"], ["10.20.0.0/16"]), "rebind.example")

    def test_platform_services_are_reachable_at_their_own_urls_only(self) -> None:
        platform = egress.platform_destinations(
            {"BHIV_AGENT_ORCHESTRATION_URL": "http://agents.bhiv.svc:8003"}
        )
        p = policy([], platform=platform)
        assert addresses(p, "agents.bhiv.svc", 8003) == ["10.96.0.12"]
        assert p.url_refusal("http://agents.bhiv.svc:8003/triggers/1") is None
        assert (
            p.url_refusal("http://127.0.0.1:8005/events") is None
        )  # the catalog default of an unset one
        assert (
            p.url_refusal("http://agents.bhiv.svc:9999/") is not None
        )  # another port is not the service
        with pytest.raises(EgressRefused):
            addresses(policy(["*"], platform=platform), "agents.bhiv.svc", 9999)

    def test_unresolvable_names_are_refused_plainly(self) -> None:
        with pytest.raises(EgressRefused, match="could not be resolved"):
            addresses(policy(["*"]), "nowhere.example")


class TestUrlsAsSaved:
    @pytest.mark.parametrize(
        "url",
        [
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:127.0.0.1]:8000/",
            "http://[fe80::1]/",
            "http://0.0.0.0:8005/",
            "http://100.64.1.1/",
        ],
    )
    def test_internal_literals_are_refused_even_with_a_wildcard(self, url: str) -> None:
        assert "BHIV_EGRESS_ALLOWED_NETWORKS" in (policy(["*"]).url_refusal(url) or "")

    def test_names_pass_until_resolved_and_the_name_list_still_applies(self) -> None:
        assert (
            policy(["*"]).url_refusal("https://rebind.example/") is None
        )  # its address is checked on connect
        assert "BHIV_EGRESS_ALLOWED_HOSTS" in (
            policy(["partner.example"]).url_refusal("https://x.example/") or ""
        )

    def test_bad_networks_name_the_entry(self) -> None:
        with pytest.raises(ValueError, match="'10.0.0.0/33'"):
            egress.parse_networks(["10.0.0.0/33"])


def test_a_slow_resolver_counts_against_the_connect_timeout() -> None:
    async def slow(host: str, port: int) -> list[str]:
        await anyio.sleep(30)
        return ["93.184.215.14"]

    backend = egress.GuardedBackend(EgressPolicy(["*"], (), frozenset(), slow))

    async def connect() -> None:
        await backend.connect_tcp("slow.example", 443, timeout=0.05)

    with pytest.raises(httpcore.ConnectTimeout):
        anyio.run(connect)
