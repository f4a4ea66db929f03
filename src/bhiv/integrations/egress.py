"""Where the service may send requests: connections, test calls, webhook deliveries
and sync pages.

An integrations service that calls any URL it is given is a server-side request
forgery tool (the Standard Webhooks spec warns about exactly this). Two checks,
both from settings:

- **names**: the URL's host must be on ``BHIV_EGRESS_ALLOWED_HOSTS`` (names,
  ``*.example.com``, IP addresses or CIDRs, ``*``). Checked when a URL is saved
  (422 naming the field) and before every call, since the setting may change.
- **addresses**: a name is only a name; what it resolves to is decided by
  whoever runs its DNS, and may change between two lookups (DNS rebinding). So
  every connection is made by :class:`GuardedTransport`, which resolves the host
  once, refuses unless *every* address is public (loopback, private, link-local
  with the cloud metadata address, CGNAT, multicast, unspecified, reserved and
  documentation ranges are not, in IPv4 and IPv6, IPv4 inside IPv6 unwrapped),
  and connects to the address it checked. TLS still verifies the host name (SNI
  and the certificate are the URL's host) and the Host header is the URL's.
  ``BHIV_EGRESS_ALLOWED_NETWORKS`` (CIDRs) lets chosen non-public ranges through.

The platform's own services are always reachable at the URLs the platform gives
them (``BHIV_<SERVICE>_URL``, which ``bhiv up`` and the operator set, else the
catalog's local defaults): agent-orchestration subscribes to domain events as a
webhook receiver at such a URL, and those are internal addresses by nature.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

from bhiv import catalog
from bhiv.core.settings import Network, parse_networks

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Resolves (host, port) to the addresses a connection may use.
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Non-public ranges Python's ``is_global`` still calls global (3.11): the IETF
# protocol assignments block holds Oracle Cloud's metadata address 192.0.0.192.
EXTRA_BLOCKED: tuple[Network, ...] = (ipaddress.ip_network("192.0.0.0/24"),)
# IPv6 forms that carry an IPv4 address a router will deliver to.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
DEFAULT_LIMITS = httpx.Limits()


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _port_of(url: str) -> int | None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    return port or {"http": 80, "https": 443}.get(parts.scheme.lower())


def allowed(url: str, rules: Sequence[str]) -> bool:
    """The URL's host is on the name allowlist ``rules``."""
    host = host_of(url)
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for rule in rules:
        rule = rule.strip().lower()
        if rule == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(rule, strict=False):
                    return True
            except ValueError:
                continue
        elif rule.startswith("*.") and host.endswith(rule[1:]):
            return True
        elif host == rule:
            return True
    return False


def refusal(url: str) -> str:
    return (
        f"calls to host '{host_of(url)}' are not allowed; "
        "an operator adds it to BHIV_EGRESS_ALLOWED_HOSTS"
    )


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_kind(address: Address) -> str | None:
    """Why ``address`` is not a public destination ("loopback", ...), or None if it is."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return blocked_kind(inner)
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network(
        "100.64.0.0/10"
    ):
        return "carrier-grade NAT"
    if address.is_private or any(address in net for net in EXTRA_BLOCKED):
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


def platform_destinations(environ: Mapping[str, str] | None = None) -> frozenset[tuple[str, int]]:
    """(host, port) of every platform service: ``BHIV_<SERVICE>_URL`` or the catalog default."""
    found = set()
    for name in catalog.DEFAULT_PORTS:
        url = catalog.service_url(name, environ)
        host, url_port = host_of(url), _port_of(url)
        if host and url_port:
            found.add((host, url_port))
    return frozenset(found)


class EgressRefused(Exception):
    """A destination the egress rules do not allow; the message is safe to show."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (an IP literal is itself)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EgressPolicy:
    """The egress rules of one service instance (see the module docstring)."""

    def __init__(
        self,
        host_rules: Sequence[str],
        allowed_networks: Sequence[Network] = (),
        platform: frozenset[tuple[str, int]] = frozenset(),
        resolver: Resolver = system_resolver,
    ) -> None:
        self.host_rules = list(host_rules)
        self.allowed_networks = tuple(allowed_networks)
        self.platform = platform
        self.resolver = resolver

    @classmethod
    def from_settings(cls, settings: Any, resolver: Resolver = system_resolver) -> EgressPolicy:
        return cls(
            settings.egress_allowed_hosts,
            parse_networks(settings.egress_allowed_networks),
            platform_destinations(),
            resolver,
        )

    def is_platform(self, host: str, port: int | None) -> bool:
        return (host.lower(), port) in self.platform

    def address_refusal(self, host: str, address: Address) -> str | None:
        kind = blocked_kind(address)
        if kind is None or any(address in net for net in self.allowed_networks):
            return None
        # The address itself is not shown: the answer must not make us a DNS oracle
        # for the internal network.
        where = "is" if host == str(address) else "resolves to"
        return (
            f"'{host}' {where} a {kind} address, which the service does not call; "
            "an operator allows such ranges with BHIV_EGRESS_ALLOWED_NETWORKS"
        )

    def url_refusal(self, url: str) -> str | None:
        """Why ``url`` may not be called, judged without DNS; None if it may (so far)."""
        host = host_of(url)
        if self.is_platform(host, _port_of(url)):
            return None
        if not allowed(url, self.host_rules):
            return refusal(url)
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return None  # a name: its addresses are checked when connecting
        return self.address_refusal(host, literal)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``: resolved once, every one checked."""
        try:
            found = await self.resolver(host, port)
        except OSError:
            raise EgressRefused(f"'{host}' could not be resolved") from None
        if not found:
            raise EgressRefused(f"'{host}' could not be resolved")
        if self.is_platform(host, port):
            return found
        for text in found:
            # One bad address refuses the name: a rebinding answer mixes public and internal ones.
            reason = self.address_refusal(host, ipaddress.ip_address(text.split("%", 1)[0]))
            if reason:
                raise EgressRefused(reason)
        return found


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the policy checked, resolving each host once per connection."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # Resolution counts against the connect timeout, as it would inside httpcore.
        with anyio.move_on_after(timeout) as deadline:
            addresses = await self._policy.addresses(host, port)
        if deadline.cancelled_caught:
            raise httpcore.ConnectTimeout(f"resolving '{host}' took longer than {timeout}s")
        last: Exception | None = None
        for address in addresses:
            try:
                # The checked address, never the name: a second lookup could answer differently.
                return await self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are not an egress destination")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with every connection made through :class:`GuardedBackend`.

    httpx has no public hook for name resolution (encode/httpx#1319), so the
    connection pool is rebuilt with httpcore's public ``network_backend``
    parameter; the pool keeps connections per host name, so a TLS session made
    for one name never carries another's requests. No environment proxy is used:
    a proxy would resolve the name itself, past this check.
    """

    def __init__(self, policy: EgressPolicy, limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        super().__init__(trust_env=False, limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError(
                "httpx's transport changed shape; the egress guard cannot be installed"
            )
        self._pool = httpcore.AsyncConnectionPool(
            # trust_env here reads only SSL_CERT_FILE / SSL_CERT_DIR (a private CA bundle).
            ssl_context=httpx.create_ssl_context(trust_env=True),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(policy: EgressPolicy, **kwargs: Any) -> httpx.AsyncClient:
    """An AsyncClient that follows no redirect (one could lead past the rules) and
    connects only where ``policy`` allows."""
    limits = kwargs.pop("limits", DEFAULT_LIMITS)
    return httpx.AsyncClient(
        follow_redirects=False,
        transport=GuardedTransport(policy, limits),
        trust_env=False,
        **kwargs,
    )
