# `helm test` for BHIV Core (run as `python3 -c` in the image): the gateway's
# /health answers, and /services, called with a viewer JWT signed by the
# release's secret (BHIV_JWT_SECRET from the environment), lists every
# expected service as up. Exits non-zero with the reason otherwise.
import os
import sys
import time

import httpx

from bhiv.core.auth import mint_token
from bhiv.core.settings import ServiceSettings

url = os.environ["GATEWAY_URL"].rstrip("/")
expected = [s for s in os.environ.get("EXPECT_SERVICES", "").split(",") if s]
deadline = time.monotonic() + float(os.environ.get("CHECK_TIMEOUT_SECONDS", "60"))
token = mint_token(ServiceSettings(), subject="helm-test", roles=["viewer"], ttl_seconds=300)
problem = "no attempt"
while time.monotonic() < deadline:
    try:
        health = httpx.get(f"{url}/health", timeout=5)
        if health.status_code != 200:
            problem = f"GET /health: {health.status_code} {health.text[:200]}"
        else:
            services = httpx.get(
                f"{url}/services", headers={"Authorization": f"Bearer {token}"}, timeout=5
            )
            if services.status_code != 200:
                problem = f"GET /services: {services.status_code} {services.text[:200]}"
            else:
                seen = {s["name"]: s["status"] for s in services.json()["services"]}
                not_up = [
                    f"{name}={seen.get(name, 'missing')}"
                    for name in expected
                    if seen.get(name) != "up"
                ]
                if not not_up:
                    print(
                        f"gateway healthy; services up: {', '.join(expected) or '(none expected)'}"
                    )
                    sys.exit(0)
                problem = f"GET /services: not up: {', '.join(not_up)}"
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    time.sleep(2)
print(f"FAILED: {problem}", file=sys.stderr)
sys.exit(1)
