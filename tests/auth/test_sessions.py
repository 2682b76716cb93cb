"""Bootstrap, login (shape, same answer, rate limits before hashing), logout, me, password change."""

from __future__ import annotations

import uuid

from .conftest import PASSWORD, Env, bearer


async def test_bootstrap_creates_the_first_workspace_and_owner_once(env: Env):
    resp = await env.client.post(
        "/api/v1/auth/bootstrap",
        json={"email": " Boss@Example.COM ", "password": PASSWORD, "workspace_name": "Acme"},
    )
    assert resp.status_code == 201
    body = resp.json()
    assert set(body) == {"workspace_id", "operator_id", "email", "role"}
    assert body["email"] == "boss@example.com" and body["role"] == "owner"
    again = await env.client.post("/api/v1/auth/bootstrap", json={"email": "x@y.z", "password": PASSWORD})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "ALREADY_BOOTSTRAPPED"
    assert await env.stream() == ["auth.workspace_created.v1", "auth.operator_added.v1"]
    assert env.host.identity is not None
    assert env.host.identity.feed.index.open_enrolment == {body["workspace_id"]: False}


async def test_login_answers_exactly_the_protocol_shape(env: Env):
    boot = await env.bootstrap(open_enrolment=True)
    resp = await env.client.post("/api/v1/auth/login", json={"email": boot["email"], "password": PASSWORD})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "workspace_id", "role"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 8 * 3600
    assert body["workspace_id"] == boot["workspace_id"] and body["role"] == "owner"
    assert env.host.identity is not None
    claims = env.host.identity.claims(body["access_token"])
    assert claims.typ == "operator" and claims.sub == boot["operator_id"]
    assert claims.roles == {boot["workspace_id"]: "owner"}
    assert (await env.stream())[-1] == "auth.operator_logged_in.v1"


async def test_wrong_password_and_unknown_email_get_the_same_answer(env: Env):
    boot = await env.bootstrap()
    wrong = await env.client.post(
        "/api/v1/auth/login", json={"email": boot["email"], "password": "nope-nope"}
    )
    unknown = await env.client.post("/api/v1/auth/login", json={"email": "who@x.io", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "INVALID_CREDENTIALS"
    # the unknown email still cost a verify (timing), and nothing was published for either
    assert env.passwords.calls >= 3
    assert "auth.operator_logged_in.v1" not in await env.stream()


async def test_eleventh_wrong_password_is_429_without_hashing(env: Env):
    boot = await env.bootstrap()
    for _ in range(10):
        resp = await env.client.post(
            "/api/v1/auth/login", json={"email": boot["email"], "password": "bad-pass"}
        )
        assert resp.status_code == 401
    before = env.passwords.calls
    resp = await env.client.post(
        "/api/v1/auth/login", json={"email": boot["email"].upper(), "password": PASSWORD}
    )
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert env.passwords.calls == before  # no hash, no verify
    # another account is unaffected
    other = await env.client.post("/api/v1/auth/login", json={"email": "else@x.io", "password": "bad-pass"})
    assert other.status_code == 401


async def test_a_success_clears_the_account_failures(env: Env):
    boot = await env.bootstrap()
    for _ in range(9):
        await env.client.post("/api/v1/auth/login", json={"email": boot["email"], "password": "bad-pass"})
    await env.login(boot["email"])
    for _ in range(10):
        resp = await env.client.post(
            "/api/v1/auth/login", json={"email": boot["email"], "password": "bad-pass"}
        )
        assert resp.status_code == 401


async def test_per_address_limit(env: Env):
    settings = env.host.settings
    limit = settings.login_address_limit  # type: ignore[attr-defined]
    await env.r.set(f"{env.prefix}auth:rl:login:addr:" + _key("127.0.0.1"), limit, px=30_000)
    resp = await env.client.post("/api/v1/auth/login", json={"email": "a@b.c", "password": "whatever1"})
    assert resp.status_code == 429 and "Retry-After" in resp.headers


def _key(value: str) -> str:
    from services.auth.handlers import limit_key

    return limit_key(value)


async def test_login_into_a_chosen_workspace_and_a_foreign_one(env: Env):
    boot, headers = await env.owner()
    created = await env.client.post("/api/v1/workspaces", json={"name": "Second"}, headers=headers)
    ws2 = created.json()["workspace_id"]
    resp = await env.client.post(
        "/api/v1/auth/login", json={"email": boot["email"], "password": PASSWORD, "workspace_id": ws2}
    )
    assert resp.status_code == 200 and resp.json()["workspace_id"] == ws2
    foreign = await env.client.post(
        "/api/v1/auth/login",
        json={"email": boot["email"], "password": PASSWORD, "workspace_id": str(uuid.uuid4())},
    )
    assert foreign.status_code == 404


async def test_me(env: Env):
    boot, headers = await env.owner()
    resp = await env.client.get("/api/v1/auth/me", headers=headers)
    assert resp.status_code == 200
    assert resp.json() == {
        "operator_id": boot["operator_id"],
        "email": boot["email"],
        "workspace_id": boot["workspace_id"],
        "role": "owner",
        "workspaces": [{"workspace_id": boot["workspace_id"], "name": "Default workspace", "role": "owner"}],
    }
    assert (await env.client.get("/api/v1/auth/me")).status_code == 401
    assert (await env.client.get("/api/v1/auth/me", headers=bearer("fs1.bad.token.x"))).status_code == 401
    other_ws = await env.client.get(
        "/api/v1/auth/me", headers={**headers, "X-Workspace-ID": str(uuid.uuid4())}
    )
    assert other_ws.status_code == 404


async def test_logout_revokes_the_token(env: Env):
    boot, headers = await env.owner()
    other = bearer(await env.login(boot["email"]))
    resp = await env.client.post("/api/v1/auth/logout", headers=headers)
    assert resp.status_code == 204 and resp.content == b""
    assert (await env.client.get("/api/v1/auth/me", headers=headers)).status_code == 401
    assert (await env.client.post("/api/v1/auth/logout", headers=headers)).status_code == 401
    assert (await env.client.get("/api/v1/auth/me", headers=other)).status_code == 200
    assert (await env.stream())[-1] == "auth.operator_logged_out.v1"


async def test_password_change_revokes_older_sessions(env: Env):
    boot, headers = await env.owner()
    new = "a brand new password"
    env.remember(new)
    wrong = await env.client.post(
        "/api/v1/auth/password",
        json={"current_password": "not-it-at-all", "new_password": new},
        headers=headers,
    )
    assert wrong.status_code == 403
    short = await env.client.post(
        "/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": "short"}, headers=headers
    )
    assert short.status_code == 400 and short.json()["error"]["code"] == "WEAK_PASSWORD"
    resp = await env.client.post(
        "/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": new}, headers=headers
    )
    assert resp.status_code == 204
    assert (await env.client.get("/api/v1/auth/me", headers=headers)).status_code == 401
    old = await env.client.post("/api/v1/auth/login", json={"email": boot["email"], "password": PASSWORD})
    assert old.status_code == 401
    fresh = bearer(await env.login(boot["email"], new))
    assert (await env.client.get("/api/v1/auth/me", headers=fresh)).status_code == 200
    assert "auth.password_changed.v1" in await env.stream()


async def test_password_change_is_rate_limited_before_hashing(env: Env):
    _, headers = await env.owner()
    for _ in range(10):
        resp = await env.client.post(
            "/api/v1/auth/password",
            json={"current_password": "wrong-wrong", "new_password": "whatever-new"},
            headers=headers,
        )
        assert resp.status_code == 403
    before = env.passwords.calls
    resp = await env.client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "whatever-new"},
        headers=headers,
    )
    assert resp.status_code == 429 and "Retry-After" in resp.headers
    assert env.passwords.calls == before


async def test_a_password_changed_while_logging_in_refuses_the_old_one(env: Env):
    """The race: the old password verifies, then a change commits before the session is opened."""
    boot = await env.bootstrap()
    real_verify = env.passwords.verify

    async def verify_then_change(password_hash: str, password: str) -> bool:
        ok = await real_verify(password_hash, password)
        await env.pool.execute(  # a concurrent password change commits in between
            "UPDATE operators SET password_hash = 'changed-elsewhere' WHERE id = $1::uuid",
            boot["operator_id"],
        )
        return ok

    env.passwords.verify = verify_then_change  # type: ignore[method-assign]
    resp = await env.client.post("/api/v1/auth/login", json={"email": boot["email"], "password": PASSWORD})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "INVALID_CREDENTIALS"
