"""`bhiv up` as a developer runs it: every service starts, answers, and stops on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from stat import S_IMODE

import httpx
import pytest

from bhiv import catalog
from tests.support.net import wait_http
from tests.support.up import bhiv_up, free_offset, launch, token, up_command, up_env


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_starts_every_service_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    offset = free_offset()
    log = (tmp_path / "up.log").open("wb")
    up = launch(tmp_path, offset, log)
    try:
        for entry in catalog.SERVICES.values():
            wait_http(
                f"http://127.0.0.1:{entry.port + offset}/health",
                timeout=90,
                alive=lambda: up.poll() is None,
            )
        deadline = time.monotonic() + 30
        while (
            "BHIV Core is up" not in (tmp_path / "up.log").read_text()
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)

        # A token from `bhiv token` (same data dir, so the same local secret) works.
        editor = token(tmp_path, "editor")
        logistics = f"http://127.0.0.1:{catalog.get('logistics').port + offset}"
        r = httpx.post(
            f"{logistics}/inventory",
            json={"sku": "UP-1", "name": "From bhiv up", "quantity": 3},
            headers={"Authorization": f"Bearer {editor}"},
        )
        assert r.status_code == 201, r.text
        assert (tmp_path / "logistics.db").exists()
        # The web console is served by the gateway `bhiv up` started, and says where.
        gateway = f"http://127.0.0.1:{catalog.get('gateway').port + offset}"
        assert f"Web console: {gateway}/console" in (tmp_path / "up.log").read_text()
        page = httpx.get(f"{gateway}/console", follow_redirects=True)
        assert page.status_code == 200 and 'id="sign-in-form"' in page.text
        # The data directory, every database file and the local secrets are the user's alone.
        assert S_IMODE(tmp_path.stat().st_mode) == 0o700
        private = [
            p
            for p in tmp_path.iterdir()
            if ".db" in p.name or p.name in ("jwt-secret", "credentials-key")
        ]
        assert {"logistics.db", "integrations.db", "jwt-secret", "credentials-key"} <= {
            p.name for p in private
        }
        assert {p.name: S_IMODE(p.stat().st_mode) for p in private} == {
            p.name: 0o600 for p in private
        }

        children = _children(up.pid)
        assert len(children) == len(catalog.SERVICES)
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in children)
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert "BHIV Core is up" in output and "stopping all services" in output
    assert "logistics |" in output  # child output is prefixed with its service's name
    # Not on a terminal: the children's JSON log lines pass through as they are.
    access = [
        json.loads(line.split(" | ", 1)[1])
        for line in output.splitlines()
        if line.strip().startswith("logistics |") and '"path": "/inventory"' in line
    ]
    assert [(a["method"], a["status"]) for a in access] == [("POST", 201)]


def test_up_shows_readable_log_lines_when_asked(tmp_path: Path) -> None:
    with bhiv_up(tmp_path, "logistics", env={"BHIV_LOG_FORMAT": "text"}) as up:
        r = httpx.get(f"{up.url('logistics')}/inventory/424242", headers=up.auth)
        assert r.status_code == 404
    output = (tmp_path / "up.log").read_text()
    [line] = [line for line in output.splitlines() if "/inventory/424242" in line]
    assert re.search(r"logistics \| \d\d:\d\d:\d\d\.\d{3} INFO  GET /inventory/424242 404 ", line)
    assert f"rid={r.headers['X-Request-ID']}" in line
    assert "{" not in line  # no JSON


def test_up_refuses_an_unknown_log_format(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bhiv", "up", "--port-offset", str(free_offset())],
        env={**up_env(tmp_path), "BHIV_LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "BHIV_LOG_FORMAT='xml': use auto, json or text" in done.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    offset = free_offset()
    entry = catalog.get("logistics")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", entry.port + offset))
        blocker.listen()
        result = subprocess.run(
            up_command(tmp_path, offset),
            env=up_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"port {entry.port + offset} for logistics is already in use" in message


@pytest.mark.parametrize("args", [["up", "--only", "nope"], ["serve", "nope"]])
def test_unknown_service_names_are_refused(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bhiv", *args],
        env=up_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "nope" in result.stderr


def test_children_find_each_other_under_a_port_offset(tmp_path: Path) -> None:
    """Under --port-offset no service is at its catalog port, so Logistics' outbox
    relay reaches Integrations only if `bhiv up` told it where Integrations is."""
    with bhiv_up(
        tmp_path, "integrations", "logistics", env={"BHIV_OUTBOX_RELAY_INTERVAL": "0.2"}
    ) as up:
        integrations, logistics, auth = up.url("integrations"), up.url("logistics"), up.auth
        r = httpx.post(
            f"{logistics}/inventory",
            json={"sku": "OFFSET-1", "name": "Low", "quantity": 5, "reorder_level": 4},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        r = httpx.post(
            f"{logistics}/inventory/{r.json()['id']}/movements",
            json={"type": "reservation", "quantity": 2},
            headers=auth,
        )
        assert r.status_code == 201, r.text

        deadline = time.monotonic() + 30
        events: list[dict] = []
        while not events and time.monotonic() < deadline:
            r = httpx.get(
                f"{integrations}/events", params={"type": "inventory.low_stock"}, headers=auth
            )
            assert r.status_code == 200, r.text
            events = [e for e in r.json()["items"] if e["data"]["sku"] == "OFFSET-1"]
            time.sleep(0.2)
        assert len(events) == 1, (tmp_path / "up.log").read_text()[-3000:]
        assert events[0]["source"] == "logistics"


def test_workflow_steps_call_the_offset_copy(tmp_path: Path) -> None:
    """Issue 19: under --port-offset a workflow's service step reaches this copy's
    Logistics (from the BHIV_LOGISTICS_URL `bhiv up` exports), not the catalog's port."""
    with bhiv_up(tmp_path, "logistics", "agent-orchestration") as up:
        logistics, agents, auth = up.url("logistics"), up.url("agent-orchestration"), up.auth
        r = httpx.post(
            f"{logistics}/inventory",
            json={"sku": "OFFSET-WF", "name": "Here", "quantity": 3},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        step = {
            "id": "item",
            "type": "service",
            "call": {
                "service": "logistics",
                "method": "GET",
                "path": "/inventory/sku/{{ input.sku }}",
            },
        }
        r = httpx.post(
            f"{agents}/workflows", json={"name": "offset-lookup", "steps": [step]}, headers=auth
        )
        assert r.status_code == 201, r.text
        r = httpx.post(
            f"{agents}/runs",
            json={"workflow": "offset-lookup", "input": {"sku": "OFFSET-WF"}},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        deadline = time.monotonic() + 60
        run: dict = {}
        while time.monotonic() < deadline:
            run = httpx.get(f"{agents}/runs/{run_id}", headers=auth).json()
            if run["status"] in ("succeeded", "failed", "cancelled", "compensated"):
                break
            time.sleep(0.2)
        assert run["status"] == "succeeded", run
        (item,) = [s for s in run["steps"] if s["step_id"] == "item"]
        assert item["output"]["sku"] == "OFFSET-WF", item


def test_serve_after_waits_to_serve_until_the_earlier_service_is_ready(tmp_path: Path) -> None:
    """`bhiv up` launches every service at once; `serve --after` keeps the order."""
    offset = free_offset()
    first = catalog.get("integrations").port + offset
    second = catalog.get("logistics").port + offset

    def serve(name: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "bhiv", "serve", name, "--port", str(port), *extra],
            env=up_env(tmp_path),
            stdout=(tmp_path / f"{name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )

    later = serve("logistics", second, "--after", f"http://127.0.0.1:{first}")
    earlier: subprocess.Popen[bytes] | None = None
    try:
        # Built and migrated, but not serving while the service it follows is down.
        deadline = time.monotonic() + 60
        while not (tmp_path / "logistics.db").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        assert later.poll() is None
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{second}/health", timeout=1)
        earlier = serve("integrations", first)
        wait_http(
            f"http://127.0.0.1:{second}/health/ready",
            timeout=60,
            alive=lambda: later.poll() is None,
        )
        assert earlier.poll() is None
    finally:
        for process in (later, earlier):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
