"""Pure pieces of the integrations service: signatures, egress rules, secrets at
rest, the retry schedule, event patterns, sync cursors and value comparison."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from standardwebhooks import Webhook

from bhiv.core.backoff import delay_after, exponential, with_jitter
from bhiv.integrations import egress, signing
from bhiv.integrations.crypto import SecretBox, UnreadableSecret
from bhiv.integrations.delivery import matches, storable
from bhiv.integrations.models import SyncTarget
from bhiv.integrations.sync import _MISSING, cursor_order, dig
from bhiv.integrations.targets import TARGETS, comparable


class TestSigning:
    def test_round_trip_with_the_reference_library(self) -> None:
        secret = signing.new_secret()
        body = b'{"type":"a.b","data":{"x":"\xc3\xa9"}}'
        now = int(time.time())
        headers = signing.sign(secret, "msg_1", now, body)
        Webhook(secret).verify(body, headers)  # what any Standard Webhooks consumer does
        signing.verify(secret, signing.parse_headers(headers), body, tolerance_seconds=300)

    def test_spec_example_vector(self) -> None:
        # The known answer from the Standard Webhooks reference tests.
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        body = b'{"test": 2432232314}'
        headers = signing.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    @pytest.mark.parametrize(
        "change",
        [
            {"webhook-signature": "v1,AAAA"},
            {"webhook-signature": "v2,AAAA"},
            {"webhook-timestamp": str(int(time.time()) - 301)},
            {"webhook-id": "msg_other"},
        ],
    )
    def test_refusals(self, change: dict[str, str]) -> None:
        secret = signing.new_secret()
        body = b"{}"
        headers = signing.sign(secret, "msg_1", int(time.time()), body) | change
        with pytest.raises(signing.SignatureError):
            signing.verify(secret, signing.parse_headers(headers), body, tolerance_seconds=300)

    @pytest.mark.parametrize(
        ("header", "value"),
        [
            ("webhook-signature", "v1"),
            ("webhook-signature", "v1,***"),
            ("webhook-signature", "v1,a,b"),
            ("webhook-signature", "v1,AAAA "),
            ("webhook-signature", "v1," + "A" * 2100),
            ("webhook-timestamp", "abc"),
            ("webhook-timestamp", "12.5e3"),
            (
                "webhook-timestamp",
                "\u00b2\u00b3",
            ),  # Unicode digits: str.isdigit() says yes, int() says no
            ("webhook-timestamp", "\u0663\u0664"),  # Arabic-Indic digits: int() accepts them
            ("webhook-timestamp", "1" * 13),
            ("webhook-timestamp", "-1"),
            ("webhook-id", "caf\u00e9"),
            ("webhook-id", "a\x00b"),
            ("webhook-id", "m" * 256),
            ("webhook-id", ""),
        ],
    )
    def test_malformed_headers_name_the_header(self, header: str, value: str) -> None:
        headers = signing.sign(signing.new_secret(), "msg_1", int(time.time()), b"{}") | {
            header: value
        }
        with pytest.raises(signing.MalformedHeader) as caught:
            signing.parse_headers(headers)
        assert caught.value.header == header

    def test_strict_parse_keeps_well_formed_headers(self) -> None:
        headers = signing.sign(signing.new_secret(), "msg_1", 1614265330, b"{}")
        parsed = signing.parse_headers(
            headers | {"webhook-signature": headers["webhook-signature"] + " v1a,xyz="}
        )
        assert (parsed.msg_id, parsed.timestamp) == ("msg_1", 1614265330)

    def test_non_utf8_bodies_are_refused(self) -> None:
        secret = signing.new_secret()
        headers = signing.parse_headers(signing.sign(secret, "m", int(time.time()), b"ok"))
        with pytest.raises(signing.SignatureError):
            signing.verify(secret, headers, b"\xff\xfe", tolerance_seconds=300)

    @pytest.mark.parametrize("bad", ["abc", "whsec_", "whsec_!!", "whsec_c2hvcnQ="])
    def test_secret_format(self, bad: str) -> None:
        with pytest.raises(ValueError):
            signing.check_secret(bad)
        assert signing.check_secret(signing.new_secret())


class TestEgress:
    @pytest.mark.parametrize(
        ("url", "rules", "ok"),
        [
            ("http://127.0.0.1:9000/x", ["127.0.0.0/8"], True),
            ("http://127.9.9.9/", ["127.0.0.0/8"], True),
            ("http://10.0.0.1/", ["127.0.0.0/8", "localhost"], False),
            ("http://localhost:1/", ["localhost"], True),
            ("http://[::1]:8000/", ["::1"], True),
            ("https://api.acme.example/v1", ["*.acme.example"], True),
            ("https://acme.example.evil.test/", ["*.acme.example"], False),
            ("https://anything.test/", ["*"], True),
            ("https://api.acme.example/", [], False),
        ],
    )
    def test_rules(self, url: str, rules: list[str], ok: bool) -> None:
        assert egress.allowed(url, rules) is ok


class TestSecretBox:
    def test_sealed_values_open_and_keys_rotate(self) -> None:
        old = SecretBox(["old-key"])
        token = old.seal_json({"token": "t0p"})
        assert "t0p" not in token
        rotated = SecretBox(["new-key", "old-key"])
        assert rotated.open_json(token) == {"token": "t0p"}
        with pytest.raises(UnreadableSecret):
            SecretBox(["new-key"]).open(token)

    def test_reseal_moves_a_secret_to_the_first_key(self) -> None:
        token = SecretBox(["old-key"]).seal("whsec-value")
        resealed = SecretBox(["new-key", "old-key"]).reseal(token)
        assert resealed != token and SecretBox(["new-key"]).open(resealed) == "whsec-value"
        with pytest.raises(UnreadableSecret):
            SecretBox(["other-key"]).reseal(token)


class TestRetrySchedule:
    def test_exponential_then_capped(self) -> None:
        schedule = exponential(5, 4, 36_000)
        assert [delay_after(schedule, n) for n in range(1, 8)] == [
            5,
            20,
            80,
            320,
            1280,
            5120,
            20480,
        ]
        assert delay_after(schedule, 9) == 36_000

    def test_jitter_only_stretches(self) -> None:
        for _ in range(100):
            assert 10 <= with_jitter(10, 0.2) <= 12


def test_event_patterns() -> None:
    assert matches(["shipment.*"], "shipment.status_changed")
    assert not matches(["shipment.*"], "shipments.other")
    assert matches(["*"], "x.y") and matches(["a.b"], "a.b") and not matches(["a.b"], "a.bc")


def test_storable_text_drops_nul() -> None:
    assert storable("a\x00b") == "a\ufffdb" and len(storable("x" * 9000)) == 500


class TestSyncPieces:
    def test_dig(self) -> None:
        record = {"a": {"b": {"c": 1}}, "n": None}
        assert dig(record, "a.b.c") == 1 and dig(record, "n") is None
        assert dig(record, "a.x") is _MISSING and dig([], "a") is _MISSING

    def test_cursor_order(self) -> None:
        assert cursor_order(10) > cursor_order("9")
        assert cursor_order("2026-01-02T00:00:00Z") > cursor_order("2026-01-01T23:59:59Z")

    def test_comparable_values(self) -> None:
        suppliers = TARGETS[SyncTarget.logistics_suppliers]
        source = {"name": " Acme ", "rating": 4.5, "lead_time_days": "5"}
        stored = {"name": "Acme", "rating": "4.50", "lead_time_days": 5}
        assert comparable(suppliers, source, set(source)) == comparable(
            suppliers, stored, set(source)
        )
        customers = TARGETS[SyncTarget.crm_customers]
        assert comparable(customers, {"email": "A@X.io"}, {"email"}) == comparable(
            customers, {"email": "a@x.io"}, {"email"}
        )
        assert comparable(customers, {"tags": ["b", "a"]}, {"tags"}) == comparable(
            customers, {"tags": ["a", "b"]}, {"tags"}
        )


def test_event_timestamps_are_utc_z() -> None:
    from bhiv.integrations.delivery import payload
    from bhiv.integrations.models import Event

    event = Event(
        event_id="e1",
        type="a.b",
        source="s",
        occurred_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        data={},
    )
    assert b'"timestamp":"2026-01-01T00:00:00Z"' in payload(event)
