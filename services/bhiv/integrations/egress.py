"""Which hosts the service may call: connections, webhook subscribers.

An integrations service that calls any URL it is given is a server-side request
forgery tool (the Standard Webhooks spec warns about exactly this), so the
hosts are an allowlist from settings. The default allows loopback only; a
deployment lists its partners' hosts (or ``*``). URLs are checked when they are
saved (422 naming the field) and again before every call, since the setting
may have changed since.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def allowed(url: str, rules: Sequence[str]) -> bool:
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
