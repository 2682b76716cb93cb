"""Compose's one-shot ``bootstrap``: the first owner and workspace, from the environment.

``POST /api/v1/auth/bootstrap`` is open only while no operator exists, so a fresh deployment claims
it at once with ``FLEET_OWNER_EMAIL`` / ``FLEET_OWNER_PASSWORD`` (from .env, no defaults) instead of
leaving it to whoever reaches the edge first. Already bootstrapped (409) is success: this runs on
every ``docker compose up``. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request


def main() -> int:
    url = os.environ.get("FLEET_AUTH_URL", "http://auth:8001").rstrip("/") + "/api/v1/auth/bootstrap"
    body = {
        "email": os.environ["FLEET_OWNER_EMAIL"],
        "password": os.environ["FLEET_OWNER_PASSWORD"],
        "workspace_name": os.environ.get("FLEET_WORKSPACE_NAME") or "Fleet",
        "open_enrolment": os.environ.get("FLEET_OPEN_ENROLMENT", "false").lower() in ("1", "true", "yes"),
    }
    request = urllib.request.Request(  # noqa: S310 - the URL is compose's, never user input
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    for _attempt in range(30):
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
                print(f"bootstrapped workspace {json.load(resp)['workspace_id']} for {body['email']}")
                return 0
        except urllib.error.HTTPError as exc:
            if exc.code == 409:
                print("already bootstrapped: nothing to do")
                return 0
            print(f"bootstrap refused: {exc.code} {exc.read()[:300]!r}", file=sys.stderr)
            if exc.code < 500:
                return 1
        except OSError as exc:
            print(f"auth not reachable yet: {exc}", file=sys.stderr)
        time.sleep(2)
    return 1


if __name__ == "__main__":
    sys.exit(main())
