"""The pieces of access control without a server: credentials, Origins, the fair share of
a provider's budget, throttled logs, and what reaches a client in an error."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from urllib3.exceptions import MaxRetryError, NewConnectionError

from backend.access.credentials import Authenticator, token_of
from backend.access.fairuse import FairUse, ProviderShare, ThrottledLog
from backend.access.frontdoor import AcceptErrors
from backend.access.identity import Identity, current
from backend.access.origins import OriginPolicy, origin_of
from backend.access.subscriptions import SubscriptionQuota
from backend.access.tiers import Tiers
from backend.api.rest import content_disposition
from backend.app import create_app
from backend.data_providers.polygon.rest import translated
from backend.errors import AccessDenied, ConfigError, ProviderUnavailable, RateLimited
from backend.model.bars import SeriesId
from backend.settings import Settings, load_settings
from tests.harness import until

SECRET = "unit-test-secret-long-enough-for-hs256!"
KEY = SeriesId("counting", "AAA", "1m")


LOCAL = "http://localhost"  # a Host of this machine: served with AUTH=none (ALLOWED_HOSTS)


def settings(**values: Any) -> Settings:
    return load_settings(**values)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 60, **extra}


# ---------------------------------------------------------------------- credentials


def test_a_token_is_read_from_a_bearer_header_an_api_key_header_or_the_query() -> None:
    assert token_of([(b"authorization", b"Bearer abc")], b"") == "abc"
    assert token_of([(b"x-api-key", b"k1")], b"") == "k1"
    assert token_of([], b"a=1&token=t%2B1") == "t+1"
    assert token_of([(b"authorization", b"Basic eA==")], b"") is None


def test_api_keys_come_from_the_setting_and_the_file_and_a_wrong_key_is_401(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# operators\nfile-key-123  # alice\n\n")
    auth = Authenticator(settings(AUTH="token", API_KEYS="env-key-1,env-key-2", API_KEYS_FILE=keys))
    assert auth.identify("env-key-2", "10.0.0.1").authenticated
    assert auth.identify("file-key-123", "10.0.0.1").client.startswith("key-")
    for wrong in ("env-key", "file-key-1234", None):
        with pytest.raises(AccessDenied) as denied:
            auth.identify(wrong, "10.0.0.1")
        assert denied.value.status == 401
    assert "env-key" not in auth.identify("env-key-1", "x").client  # a digest, not the key


def test_a_keys_file_caught_empty_while_an_editor_rewrites_it_keeps_its_keys(
    tmp_path: Path,
) -> None:
    """Editors that save in place truncate the file before writing it: read at that
    instant, every key of ``API_KEYS_FILE`` was revoked (401, open sockets closed). An
    empty file keeps the keys read before; the written file then counts."""
    keys = tmp_path / "keys.txt"
    keys.write_text("first-key-123\n")
    auth = Authenticator(settings(AUTH="token", API_KEYS_FILE=keys))
    identity = auth.identify("first-key-123", "a")
    keys.write_text("")
    assert auth.identify("first-key-123", "a").authenticated and not auth.revoked(identity)
    keys.write_text("second-key-456\n")
    assert auth.revoked(identity) and auth.identify("second-key-456", "a").authenticated


def test_key_files_saved_with_a_byte_order_mark_and_crlf_are_read(tmp_path: Path) -> None:
    """Windows Notepad saves "UTF-8" with a byte order mark and CRLF line ends: the first key
    of ``API_KEYS_FILE`` kept the mark and never matched (401), and a JWKS file so saved
    stopped the start ("not a JWKS: Unexpected UTF-8 BOM")."""
    keys = tmp_path / "keys.txt"
    keys.write_bytes("\ufefffirst-key-123\r\nsecond-key-456\r\n".encode())
    auth = Authenticator(settings(AUTH="token", API_KEYS_FILE=keys))
    assert auth.identify("first-key-123", "a").authenticated
    assert auth.identify("second-key-456", "a").authenticated
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(("\ufeff" + json.dumps({"keys": [{**jwk, "kid": "k1"}]})).encode())
    auth = Authenticator(settings(AUTH="jwt", JWT_PUBLIC_KEY=str(jwks)))
    token = jwt.encode(claims(), private, algorithm="RS256", headers={"kid": "k1"})
    assert auth.identify(token, "a").client == "sub-alice"


def test_auth_token_without_keys_and_jwt_without_a_key_fail_at_startup() -> None:
    with pytest.raises(ConfigError, match="API_KEYS"):
        settings(AUTH="token")
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        settings(AUTH="jwt")
    with pytest.raises(ConfigError, match="AUTH"):
        settings(AUTH="basic")


def test_a_jwt_is_checked_for_signature_expiry_and_audience() -> None:
    auth = Authenticator(settings(AUTH="jwt", JWT_SECRET=SECRET, JWT_AUDIENCE="cw"))
    good = jwt.encode(claims(aud="cw"), SECRET)
    assert auth.identify(good, "a").client == "sub-alice"
    bad = {
        "expired": jwt.encode(claims(aud="cw", exp=int(time.time()) - 5), SECRET),
        "audience": jwt.encode(claims(aud="other"), SECRET),
        "no expiry": jwt.encode({"sub": "x", "aud": "cw"}, SECRET),
        "signature": jwt.encode(claims(aud="cw"), SECRET + "x"),
        "none alg": jwt.encode(claims(aud="cw"), "", algorithm="none"),
    }
    for why, token in bad.items():
        with pytest.raises(AccessDenied) as denied:
            auth.identify(token, "a")
        assert denied.value.status == 401, why
        assert token not in denied.value.message


def test_jwt_claims_restrict_sources_and_symbols_and_set_the_tier() -> None:
    auth = Authenticator(settings(AUTH="jwt", JWT_SECRET=SECRET))
    token = jwt.encode(
        claims(sources=["counting"], symbols=["AAA", "csv:BTCUSD"], tier="pro"), SECRET
    )
    identity = auth.identify(token, "a")
    assert identity.tier == "pro" and identity.expires_at is not None
    assert identity.allows("counting", "AAA")
    assert not identity.allows("counting", "BBB")
    assert not identity.allows("csv", "BTCUSD")  # the source is not among its sources


def test_a_jwt_signed_by_an_identity_provider_is_verified_with_its_jwks(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    auth = Authenticator(settings(AUTH="jwt", JWT_PUBLIC_KEY=str(jwks)))
    token = jwt.encode(claims(), private, algorithm="RS256", headers={"kid": "k1"})
    assert auth.identify(token, "a").client == "sub-alice"
    unknown = jwt.encode(claims(), private, algorithm="RS256", headers={"kid": "k2"})
    with pytest.raises(AccessDenied):
        auth.identify(unknown, "a")


def test_a_pem_key_with_literal_backslash_n_from_an_env_file_is_read(tmp_path: Path) -> None:
    """``JWT_PUBLIC_KEY="-----BEGIN PUBLIC KEY-----\\nMIIB...\\n-----END..."``: a PEM put on
    one line of an env file, Docker's ``env_file`` or a CI secret, arrives with literal
    ``\\n``. It stopped the start with "not a PEM public key"."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    one_line = pem.decode().strip().replace("\n", "\\n")
    auth = Authenticator(settings(AUTH="jwt", JWT_PUBLIC_KEY=one_line))
    assert auth.identify(jwt.encode(claims(), private, algorithm="ES256"), "a").authenticated


def test_a_pem_key_whose_line_breaks_became_spaces_is_read() -> None:
    """Some hosting dashboards keep one line per variable and turn a pasted PEM's line
    breaks into spaces: the start stopped with "not a PEM public key"."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    spaced = " ".join(pem.decode().split())
    auth = Authenticator(settings(AUTH="jwt", JWT_PUBLIC_KEY=spaced))
    assert auth.identify(jwt.encode(claims(), private, algorithm="ES256"), "a").authenticated


def test_a_token_without_kid_is_checked_against_every_key_of_the_jwks(tmp_path: Path) -> None:
    """A JWKS of several keys (a rotation: the old key and the new one) and a token whose
    header names no ``kid`` (some issuers omit it): the server found no key for it (401),
    and of several keys without ``kid`` it kept only the last."""
    old, new = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "on")
    keys = [json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())) for k in (old, new)]
    for with_kids in (True, False):
        listed = [{**key, "kid": f"k{i}"} if with_kids else key for i, key in enumerate(keys)]
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps({"keys": listed}))
        auth = Authenticator(settings(AUTH="jwt", JWT_PUBLIC_KEY=str(jwks)))
        for private in (old, new):
            token = jwt.encode(claims(), private, algorithm="RS256")
            assert auth.identify(token, "a").client == "sub-alice", with_kids
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with pytest.raises(AccessDenied):
            auth.identify(jwt.encode(claims(), stranger, algorithm="RS256"), "a")


def test_a_jwks_url_for_the_public_key_is_taken_and_a_url_of_another_scheme_refused() -> None:
    """Identity providers publish their keys at a JWKS URL: ``JWT_PUBLIC_KEY`` may name it
    (fetched by the server: test_access_jwks_url). Until then it was refused with what to
    do instead; a scheme other than http(s) still is, naming the variable."""
    url = "https://tenant.auth0.com/.well-known/jwks.json"
    configured = settings(AUTH="jwt", JWT_PUBLIC_KEY=url).JWT_PUBLIC_KEY
    assert configured == url
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEY") as refused:
        settings(AUTH="jwt", JWT_PUBLIC_KEY="ftp://tenant.example/jwks.json")
    assert "http(s)" in str(refused.value)


# ---------------------------------------------------------------------- Origins


def test_the_default_origin_policy_allows_the_own_origin_and_localhost_only() -> None:
    policy = OriginPolicy(())
    assert policy.allows(None, "example.com:8000")  # not a browser page
    assert policy.allows("http://example.com:8000", "example.com:8000")
    assert policy.allows("http://localhost:5173", "example.com:8000")
    assert not policy.allows("https://evil.example", "example.com:8000")
    listed = OriginPolicy(("https://app.example.com",))
    assert listed.allows("https://app.example.com/", "x:1")
    assert not listed.allows("http://localhost:5173", "x:1")
    assert OriginPolicy(("*",)).allows("https://anything.example", "x:1")
    workspace = OriginPolicy((), ("https://pro.openbb.co",))
    assert workspace.allows("https://pro.openbb.co", "x:1")
    assert workspace.allows("http://localhost:5173", "x:1")


def test_the_origin_of_the_public_url_is_what_a_browser_sends() -> None:
    assert origin_of("https://Charts.example.com:443/candlewire") == ["https://charts.example.com"]
    assert origin_of("http://example.com:80") == ["http://example.com"]
    assert origin_of("https://example.com:8443/x") == ["https://example.com:8443"]
    assert origin_of("http://[::1]:8000") == ["http://[::1]:8000"]
    assert origin_of("") == []


# ---------------------------------------------------------------------- fair use


def test_a_greedy_client_cannot_take_a_providers_budget_from_a_newcomer() -> None:
    share = ProviderShare(per_second=2, window=5)  # 10 calls per window
    admitted = sum(share.admit("greedy", 0.0) is None for _ in range(100))
    assert admitted == 10
    assert share.admit("newcomer", 1.0) is not None  # the budget is spent within the window
    share = ProviderShare(per_second=2, window=5)
    assert all(share.admit("greedy", 0.0) is None for _ in range(6))  # alone: all it wants
    assert share.admit("newcomer", 0.1) is None
    assert share.admit("greedy", 0.2) is not None  # had its share (5 of 10), half is used
    assert all(share.admit("newcomer", 0.3) is None for _ in range(3))
    assert share.admit("newcomer", 0.4) is not None  # the provider's budget is spent
    assert share.admit("greedy", 5.0) is None  # the window moved on


def test_the_upstream_budget_refuses_with_a_retry_time_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fair = FairUse(settings(UPSTREAM_CALLS_PER_SECOND=1, UPSTREAM_BURST=3))
    token = current.set(Identity(client="sub-mallory", address="10.0.0.9"))
    try:
        for _ in range(3):
            fair.admit_fetch(KEY)
        with caplog.at_level(logging.WARNING, "backend.access.fairuse"):
            for _ in range(50):
                with pytest.raises(RateLimited) as refused:
                    fair.admit_fetch(KEY)
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        assert "retry after" in str(refused.value)
        assert len(caplog.records) == 1
    finally:
        current.reset(token)
    fair.admit_fetch(KEY)  # another caller has its own budget


@pytest.mark.parametrize("connection", ["", "127.0.0.1/7"], ids=["http", "socket"])
def test_the_local_user_has_no_upstream_budget_but_counts_in_the_providers_share(
    connection: str,
) -> None:
    """README "Security": limits keyed by an address do not apply to loopback; the
    provider's own budget (its fair shares) still does."""
    fair = FairUse(
        settings(UPSTREAM_CALLS_PER_SECOND=1, UPSTREAM_BURST=3, PROVIDER_CALLS_PER_SECOND=4)
    )
    local = Identity(client="127.0.0.1", address="127.0.0.1", connection=connection)
    token = current.set(local)
    try:
        for _ in range(15):  # five times the burst: the provider's 4/s x 5 s window is 20
            fair.admit_fetch(KEY)
        for _ in range(5):
            fair.admit_fetch(KEY)
        with pytest.raises(RateLimited) as refused:
            fair.admit_fetch(KEY)
        assert "retry after" in str(refused.value)
    finally:
        current.reset(token)


def test_a_tier_sets_the_limits_it_names_and_keeps_the_global_ones_it_leaves_out() -> None:
    tiers = Tiers(
        settings(
            REQUESTS_PER_SECOND=10,
            REQUESTS_BURST=40,
            MAX_SUBSCRIPTIONS_PER_CALLER=30,
            ACCESS_TIERS={"free": {"upstream_burst": 3, "max_subscriptions": 5}},
        )
    )
    free = tiers.of("free")
    assert (free.upstream.amount, free.subscriptions, free.requests.amount) == (3, 5, 40)
    assert tiers.of("unknown") == tiers.of("default")
    assert tiers.of("default").subscriptions == 30


def test_subscriptions_count_over_a_clients_connections_but_not_for_the_local_user() -> None:
    quota = SubscriptionQuota(Tiers(settings(MAX_SUBSCRIPTIONS_PER_CALLER=3)))
    held = {1: 2, 2: 0}
    quota.count = lambda connection: held.get(connection, 0)
    remote = Identity(client="203.0.113.9", address="203.0.113.9")
    token = current.set(remote)
    try:
        assert quota.admit(1) is None  # 2 held on connection 1
        held[1] = 3
        assert quota.admit(2) is not None  # 3 held on another connection of the address
        held[1] = 0  # connection 1 closed
        assert quota.admit(2) is None
    finally:
        current.reset(token)
    local = Identity(client="127.0.0.1", address="127.0.0.1")
    token = current.set(local)
    try:
        held[1] = 99
        assert quota.admit(1) is None
    finally:
        current.reset(token)


def test_a_throttled_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    log = ThrottledLog(interval=0.05)
    with caplog.at_level(logging.WARNING, "backend.access.fairuse"):
        for _ in range(100):
            log.report("k", "refused %s", "x")
        time.sleep(0.06)
        log.report("k", "refused %s", "x")
    assert len(caplog.records) == 2
    assert "99 more" in caplog.records[1].getMessage()


def test_out_of_descriptor_accept_errors_are_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    handler = AcceptErrors(interval=60)
    emfile = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.WARNING):
        for _ in range(10_000):
            handler(
                loop, {"message": "socket.accept() out of system resource", "exception": emfile}
            )
    loop.close()
    assert len(caplog.records) == 1 and not caplog.records[0].exc_info
    assert "Too many open files" in caplog.records[0].getMessage()


# ---------------------------------------------------------------------- what clients see


def test_a_vendor_error_reaches_clients_without_urls_or_hosts() -> None:
    reason = NewConnectionError(None, "Failed to establish a new connection")  # type: ignore[arg-type]
    vendor = MaxRetryError(None, "/v2/aggs/ticker/AAPL/range/1/minute?apiKey=s3cr3t", reason)  # type: ignore[arg-type]
    with pytest.raises(ProviderUnavailable) as failed, translated("aggregates"):
        raise vendor
    message = str(failed.value)
    assert message.startswith("polygon: aggregates:")
    for leak in ("/v2", "apiKey", "http", "HTTPConnectionPool", "host="):
        assert leak not in message


def test_content_disposition_file_names_cannot_break_the_header() -> None:
    header = content_disposition(SeriesId("csv", 'a"b\r\nSet-Cookie: x=1/é', "1h"))
    assert "\r" not in header and "\n" not in header
    fallback = header.split('filename="')[1].split('"')[0]
    assert fallback == "csv-a_b__Set-Cookie__x_1__-1h.csv"
    assert "filename*=UTF-8''csv-a%22b%0D%0ASet-Cookie%3A%20x%3D1%2F%C3%A9-1h.csv" in header


async def test_validation_errors_use_the_documented_shape_and_docs_can_be_turned_off() -> None:
    app = create_app(settings(API_DOCS=False))

    async def probe(n: int) -> dict[str, int]:
        return {"n": n}

    app.add_api_route("/probe", probe)
    app.router.routes.insert(0, app.router.routes.pop())  # before the web page's mount

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as http:
        bad = await http.get("/probe?n=abc")
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_field" and "n" in bad.json()["message"]
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await http.get(path)).status_code == 404, path


async def test_a_failure_inside_a_route_is_a_json_500_in_the_documented_shape() -> None:
    """A bug in a route answered a bare text/plain "Internal Server Error", which neither
    scripts (``{"error", "message"}``) nor the UDF adapter (``s``/``errmsg``) can read."""
    app = create_app(settings())

    async def broken() -> None:
        raise RuntimeError("a bug")

    for path in ("/api/broken", "/udf/broken"):
        app.add_api_route(path, broken)
        app.router.routes.insert(0, app.router.routes.pop())  # before the web page's mount
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as http:
        rest = await http.get("/api/broken")
        assert rest.status_code == 500
        assert rest.json()["error"] == "internal_error" and "a bug" not in rest.text
        udf = await http.get("/udf/broken")
        assert udf.status_code == 500
        assert udf.json()["s"] == "error" and udf.json()["errmsg"]


def test_the_rate_limits_forget_the_clients_whose_window_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``limits``' memory kept an empty entry for every client it ever saw (every address
    or token subject that made one request), for the life of the process."""
    monkeypatch.setattr("backend.ratelimits.PRUNE_SECONDS", 0.1)
    fair = FairUse(settings(REQUESTS_PER_SECOND=10, REQUESTS_BURST=10))  # a 1 s window
    events = fair.limiter.storage.events  # type: ignore[attr-defined]
    for i in range(300):
        assert fair.request_wait(Identity(client=f"sub-{i}", address=f"10.1.{i // 200}.{i}")) == 0
    assert len(events) == 300
    probe = Identity(client="sub-probe", address="10.2.0.1")

    def only_the_probe_left() -> bool:
        fair.request_wait(probe)
        return len(events) <= 1

    until(only_the_probe_left, 10, "the idle clients forgotten")
    busy = Identity(client="sub-busy", address="10.2.0.2")  # the limit still holds
    assert [fair.request_wait(busy) == 0 for _ in range(11)] == [True] * 10 + [False]


@pytest.mark.parametrize("value", ["https://charts.example.com", "charts.example.com:8000", "*x"])
def test_allowed_hosts_takes_names_as_a_host_header_sends_them(value: str) -> None:
    with pytest.raises(ConfigError, match="ALLOWED_HOSTS"):
        settings(ALLOWED_HOSTS=value)
    names = settings(ALLOWED_HOSTS="charts.lan, *.tailnet.example,*").ALLOWED_HOSTS
    assert names == ("charts.lan", "*.tailnet.example", "*")
