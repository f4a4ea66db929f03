"""Egress over real HTTP: the address a name resolves to is checked when the
connection is made and the connection goes to that checked address, for test
calls, sync pages and webhook deliveries alike; the platform's own services stay
reachable as delivery targets."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bhiv.integrations import egress
from bhiv.integrations.egress import EgressPolicy, EgressRefused
from tests.service.integrations.conftest import FAST
from tests.service.integrations.helpers import created, event, finished_run, unique
from tests.service.integrations.peers import Receiver, Source, receiver, source, wait_until
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess, service_process

TOKEN = "tok-egress-" + "Zq81LmX0"


def port_of(url: str) -> int:
    return urlsplit(url).port or 80


# --- the guarded transport itself, with a stand-in resolver -----------------------------


def test_the_transport_connects_to_the_checked_address_keeping_the_host_name(
    hooks: Receiver,
) -> None:
    port = port_of(hooks.url)
    answers = {"partner.test": ["127.0.0.1"]}
    asked: list[str] = []

    async def resolve(host: str, _port: int) -> list[str]:
        asked.append(host)
        return answers[host]

    async def post(networks: list[str]) -> httpx.Response:
        policy = EgressPolicy(
            ["partner.test"], egress.parse_networks(networks), frozenset(), resolve
        )
        async with egress.guarded_client(policy) as client:
            return await client.post(f"http://partner.test:{port}/pinned", content=b"{}")

    # partner.test is an allowed name, but its address is loopback: refused before any byte is sent.
    with pytest.raises(EgressRefused, match="loopback"):
        anyio.run(post, [])
    assert hooks.at("/pinned") == [] and asked == ["partner.test"]

    # Allowed explicitly, the request reaches the address that was checked, still addressed by name.
    assert anyio.run(post, ["127.0.0.0/8"]).status_code == 200
    [got] = hooks.wait_for("/pinned", 1)
    assert got.headers["host"] == f"partner.test:{port}"
    assert asked == [
        "partner.test",
        "partner.test",
    ]  # resolved once per connection, by the guard only


# --- the service, with loopback not allowed ---------------------------------------------


@pytest.fixture(scope="module")
def outsider() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture(scope="module")
def vendor() -> Iterator[Source]:
    with source(TOKEN) as s:
        yield s


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, hooks: Receiver) -> Iterator[ServiceProcess]:
    """Integrations with every host name allowed and no non-public network: only the
    platform's services (agent-orchestration at the ``hooks`` receiver) are internal."""
    env = {k: v for k, v in FAST.items() if k != "BHIV_EGRESS_ALLOWED_NETWORKS"}
    server = service_process(
        "integrations",
        tmp_path_factory.mktemp("strict-egress"),
        **env,
        BHIV_EGRESS_ALLOWED_HOSTS="*",
        BHIV_AGENT_ORCHESTRATION_URL=f"http://localhost:{port_of(hooks.url)}",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_internal_literals_are_refused_when_saved_even_with_a_wildcard(
    strict: ServiceProcess,
) -> None:
    api = strict.client()
    for url in (
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:8005/x",
        "http://100.64.0.9/",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:8005/",
    ):
        problem = assert_problem(
            api.post("/subscriptions", json={"url": url, "event_types": ["*"]}), 422, "url"
        )
        assert "BHIV_EGRESS_ALLOWED_NETWORKS" in problem["detail"]
        conn = {"name": unique("c"), "base_url": url, "auth_type": "none"}
        assert_problem(api.post("/connections", json=conn), 422, "base_url")


def test_a_name_resolving_to_loopback_is_refused_for_test_calls_and_sync(
    strict: ServiceProcess, vendor: Source
) -> None:
    api = strict.client()
    before = len(vendor.paths)
    conn = created(
        api.post(
            "/connections",
            json={
                "name": unique("rebind"),
                "base_url": f"http://localhost:{port_of(vendor.url)}",
                "auth_type": "bearer",
                "credentials": {"token": TOKEN},
                "health_path": "/health",
            },
        )
    )
    result = api.post(f"/connections/{conn['id']}/test").json()
    assert result["ok"] is False and result["status_code"] is None
    assert "loopback" in result["error"] and "BHIV_EGRESS_ALLOWED_NETWORKS" in result["error"]

    job = created(
        api.post(
            "/sync-jobs",
            json={
                "name": unique("sync"),
                "connection_id": conn["id"],
                "source_path": "/vendors",
                "records_path": "data.vendors",
                "key_field": "vendor_id",
                "target": "logistics.suppliers",
                "field_map": {"name": "name"},
            },
        )
    )
    run = api.post(f"/sync-jobs/{job['id']}/runs")
    assert run.status_code == 202, run.text
    finished = finished_run(api, run.json()["id"])
    assert finished["status"] == "failed" and "loopback" in finished["error"]
    assert vendor.paths[before:] == []  # the token never left


def test_deliveries_go_to_platform_services_but_not_to_other_internal_addresses(
    strict: ServiceProcess, hooks: Receiver, outsider: Receiver
) -> None:
    api = strict.client()
    platform = created(
        api.post(
            "/subscriptions",
            json={
                "url": f"http://localhost:{port_of(hooks.url)}/triggers/egress",
                "event_types": ["egress.check"],
            },
        )
    )
    other = created(
        api.post(
            "/subscriptions",
            json={
                "url": f"http://localhost:{port_of(outsider.url)}/stolen",
                "event_types": ["egress.check"],
            },
        )
    )
    created(api.post("/events", json=event("egress.check", n=1)))

    hooks.wait_for(
        "/triggers/egress", 1
    )  # the platform's own service (BHIV_AGENT_ORCHESTRATION_URL)
    refused = wait_until(
        lambda: [
            d
            for d in api.get(f"/subscriptions/{other['id']}/deliveries").json()["items"]
            if d["last_error"]
        ],
        30,
        "a refused delivery attempt",
    )
    assert "loopback" in refused[0]["last_error"]
    assert outsider.at("/stolen") == []
    assert platform["url"].startswith("http://localhost:")


def test_an_explicitly_allowed_network_is_called(
    integrations: ServiceProcess, vendor: Source
) -> None:
    # The module's service allows 127.0.0.0/8 (BHIV_EGRESS_ALLOWED_NETWORKS).
    api = integrations.client()
    conn = created(
        api.post(
            "/connections",
            json={
                "name": unique("lab"),
                "base_url": f"http://localhost:{port_of(vendor.url)}",
                "auth_type": "bearer",
                "credentials": {"token": TOKEN},
                "health_path": "/health",
            },
        )
    )
    assert api.post(f"/connections/{conn['id']}/test").json() == {
        "ok": True,
        "status_code": 200,
        "latency_ms": pytest.approx(0, abs=60_000),
        "error": None,
    }


# --- TLS: the pinned address, the URL's name --------------------------------------------


def _tls_material(tmp: Path) -> tuple[Path, Path, Path]:
    """A test CA (its certificate) and a server certificate for partner.test only, signed by it."""
    now = dt.datetime.now(dt.UTC)

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
        san: list[str],
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bhiv test CA")])
    ca_cert = cert("bhiv test CA", ca_key, ca_name, ca_key, True, [])
    server_cert = cert("partner.test", server_key, ca_name, ca_key, False, ["partner.test"])
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    ca, server_cert, server_key = _tls_material(tmp_path)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = self.headers.get("Host", "").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca
    finally:
        server.shutdown()
        server.server_close()


def test_tls_verifies_the_url_name_on_the_pinned_address(
    tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, ca = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the guarded transport trusts this CA bundle

    async def resolve(host: str, _port: int) -> list[str]:
        return ["127.0.0.1"]  # both names point at the same server

    async def get(host: str) -> httpx.Response:
        policy = EgressPolicy(
            ["*.test"], egress.parse_networks(["127.0.0.0/8"]), frozenset(), resolve
        )
        async with egress.guarded_client(policy) as client:
            return await client.get(f"https://{host}:{port}/")

    r = anyio.run(get, "partner.test")
    assert (
        r.status_code == 200 and r.text == f"partner.test:{port}"
    )  # SNI and Host: the name, not 127.0.0.1
    # Another name at the same address: the certificate is checked against that name, and fails.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        anyio.run(get, "other.test")
