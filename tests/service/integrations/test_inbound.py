"""Inbound webhooks: Standard Webhooks signatures verified, replays ignored, raw bodies kept."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import httpx
from standardwebhooks import Webhook

from tests.service.integrations.helpers import new_source
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def signed(
    secret: str, body: bytes, msg_id: str | None = None, at: int | None = None
) -> dict[str, str]:
    """Headers as an independent Standard Webhooks sender (the reference library) makes them."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = int(time.time()) if at is None else at
    signature = Webhook(secret).sign(
        msg_id, dt.datetime.fromtimestamp(at, tz=dt.UTC), body.decode()
    )
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(at),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def post(
    service: ServiceProcess, name: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    # No bearer token: a sender authenticates with its signature alone.
    return httpx.post(f"{service.url}/webhooks/{name}", content=body, headers=headers, timeout=10)


class TestReceiving:
    def test_signed_message_is_stored_raw_and_a_replay_is_ignored(
        self, integrations: ServiceProcess
    ) -> None:
        api = integrations.client()
        source = new_source(api)
        body = b'{"type": "invoice.paid",  "data": {"amount": 4200}}'
        headers = signed(source["secret"], body)

        first = post(integrations, source["name"], body, headers)
        assert first.status_code == 202, first.text
        assert first.json()["status"] == "accepted"

        again = post(integrations, source["name"], body, headers)
        assert again.status_code == 200 and again.json() == {
            "id": first.json()["id"],
            "status": "duplicate",
        }

        page = api.get(f"/webhook-sources/{source['id']}/messages").json()
        assert page["total"] == 1
        message = page["items"][0]
        assert message["body"] == body.decode()  # byte for byte, spacing included
        assert (
            message["event_type"] == "invoice.paid" and message["payload"]["data"]["amount"] == 4200
        )
        assert message["message_id"] == headers["webhook-id"] and message["duplicates"] == 1

    def test_tampered_body_is_rejected(self, integrations: ServiceProcess) -> None:
        api = integrations.client()
        source = new_source(api)
        headers = signed(source["secret"], b'{"amount": 10}')
        r = post(integrations, source["name"], b'{"amount": 99}', headers)
        assert_problem(r, 401)
        assert "signature" in r.json()["detail"]
        assert api.get(f"/webhook-sources/{source['id']}/messages").json()["total"] == 0

    def test_other_secret_stale_timestamp_and_garbage_signatures_are_401(
        self, integrations: ServiceProcess
    ) -> None:
        api = integrations.client()
        source = new_source(api)
        other = new_source(api)
        body = b'{"type": "x.y"}'
        assert_problem(post(integrations, source["name"], body, signed(other["secret"], body)), 401)
        stale = signed(source["secret"], body, at=int(time.time()) - 600)
        assert (
            "seconds from now"
            in assert_problem(post(integrations, source["name"], body, stale), 401)["detail"]
        )
        future = signed(source["secret"], body, at=int(time.time()) + 600)
        assert_problem(post(integrations, source["name"], body, future), 401)
        for wrong in ("v1,AAAA", "v2,abc", "v1a,abc= v1,bm90IGl0"):  # well-formed, matching nothing
            headers = signed(source["secret"], body) | {"webhook-signature": wrong}
            assert_problem(post(integrations, source["name"], body, headers), 401)

    def test_malformed_headers_are_400_naming_the_header(
        self, integrations: ServiceProcess
    ) -> None:
        source = new_source(integrations.client())
        body = b'{"type": "x.y"}'
        malformed: list[tuple[str, str | bytes]] = [
            ("webhook-signature", "v1"),
            ("webhook-signature", "v1,!!!notbase64"),
            ("webhook-signature", "nonsense"),
            ("webhook-signature", "v2,abc v1"),
            ("webhook-signature", "v1,a,b"),
            ("webhook-timestamp", "12.5e3"),
            ("webhook-timestamp", "-5"),
            ("webhook-timestamp", "9" * 40),
            # Unicode digits pass str.isdigit(); sent as the Latin-1 bytes a server decodes to "²³".
            ("webhook-timestamp", "\u00b2\u00b3".encode("latin-1")),
            ("webhook-id", "caf\u00e9".encode("latin-1")),
            ("webhook-id", "x" * 300),
        ]
        for name, value in malformed:
            headers: dict[str, str | bytes] = {**signed(source["secret"], body), name: value}
            problem = assert_problem(post(integrations, source["name"], body, headers), 400, name)  # type: ignore[arg-type]
            assert problem["errors"][0]["location"] == "header"

    def test_one_valid_signature_among_several_is_enough(
        self, integrations: ServiceProcess
    ) -> None:
        # Senders rotating keys send both signatures, space-separated.
        source = new_source(integrations.client())
        body = b'{"type": "rotation.test"}'
        headers = signed(source["secret"], body)
        old = signed(
            new_source(integrations.client())["secret"],
            body,
            msg_id=headers["webhook-id"],
            at=int(headers["webhook-timestamp"]),
        )
        headers["webhook-signature"] = f"{old['webhook-signature']} {headers['webhook-signature']}"
        assert post(integrations, source["name"], body, headers).status_code == 202

    def test_missing_headers_name_the_header(self, integrations: ServiceProcess) -> None:
        source = new_source(integrations.client())
        body = b"{}"
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            headers = signed(source["secret"], body)
            del headers[name]
            problem = assert_problem(post(integrations, source["name"], body, headers), 400, name)
            assert problem["errors"][0]["location"] == "header"

    def test_unknown_and_inactive_sources(self, integrations: ServiceProcess) -> None:
        api = integrations.client()
        source = new_source(api)
        body = b"{}"
        assert_problem(
            post(integrations, "no-such-source", body, signed(source["secret"], body)), 404
        )
        assert (
            api.patch(f"/webhook-sources/{source['id']}", json={"active": False}).status_code == 200
        )
        assert_problem(
            post(integrations, source["name"], body, signed(source["secret"], body)), 410
        )

    def test_rotated_secret_replaces_the_old_one(self, integrations: ServiceProcess) -> None:
        api = integrations.client()
        source = new_source(api)
        r = api.post(f"/webhook-sources/{source['id']}/rotate-secret")
        assert r.status_code == 200 and r.json()["secret"] != source["secret"]
        body = b'{"n": 1}'
        assert_problem(
            post(integrations, source["name"], body, signed(source["secret"], body)), 401
        )
        assert (
            post(integrations, source["name"], body, signed(r.json()["secret"], body)).status_code
            == 202
        )


class TestSources:
    def test_secret_is_shown_once_and_can_be_given(self, integrations: ServiceProcess) -> None:
        api = integrations.client()
        given = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAbCdEfGhIjK="
        source = new_source(api, secret=given)
        assert source["secret"] == given and source["endpoint"] == f"/webhooks/{source['name']}"
        fetched = api.get(f"/webhook-sources/{source['id']}").json()
        assert "secret" not in fetched
        assert given not in api.get("/webhook-sources", params={"limit": 500}).text

    def test_bad_secrets_and_names_are_422_naming_the_field(
        self, integrations: ServiceProcess
    ) -> None:
        api = integrations.client()
        for secret in ("nope", "whsec_%%%", "whsec_c2hvcnQ="):
            assert_problem(
                api.post("/webhook-sources", json={"name": "ok-name", "secret": secret}),
                422,
                "secret",
            )
        assert_problem(api.post("/webhook-sources", json={"name": "Bad Name"}), 422, "name")
        taken = new_source(api)
        assert_problem(api.post("/webhook-sources", json={"name": taken["name"]}), 409)

    def test_management_needs_admin(self, integrations: ServiceProcess) -> None:
        editor = integrations.client("editor")
        assert_problem(editor.post("/webhook-sources", json={"name": "by-editor"}), 403)
        assert editor.get("/webhook-sources").status_code == 200
