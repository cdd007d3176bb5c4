"""camservice.auth: JWT checks, API keys, the shared secret, revocation."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import re
import stat
import uuid

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camservice import apikeys, auth, config, methods, tokens
from camservice.apikeys import KeyStore
from camservice.auth import Authenticator, Identity
from camservice.errors import AUTH_REQUIRED, RpcError
from camservice.tokens import issue_token, load_or_create_secret
from tests.harness import Clock

NOW = 1_700_000_000.0
SECRET = "s" * 64


def make_config(tmp_path, secret: str | None = SECRET, **overrides):
    # tcp transport: pytest's tmp paths can exceed the ipc socket path limit.
    values = {
        "runtime.state_dir": str(tmp_path / "state"),
        "runtime.transport": "tcp",
        "security.jwt_secret": secret,
        **overrides,
    }
    return config.load(overrides=values, environ={})


@pytest.fixture
def wall():
    return Clock(NOW)


@pytest.fixture
def mono():
    return Clock(100.0)


@pytest.fixture
def authn(tmp_path, wall, mono):
    return Authenticator(make_config(tmp_path), clock=wall, monotonic=mono)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def rejected(authn: Authenticator, token: str) -> str:
    """Authenticate, expect -32001, and return data.reason (checked for leaks)."""
    with pytest.raises(RpcError) as info:
        authn.authenticate(token)
    error = info.value
    assert error.code == AUTH_REQUIRED
    assert set(error.data) == {"reason"}
    text = json.dumps(error.to_dict()) + str(error)
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in text, "an error must not echo the credential"
    return error.data["reason"]


def token(claims, secret=SECRET, algorithm="HS256", headers=None) -> str:
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)


def claims(**changes):
    base = {"sub": "alice", "role": "operator", "iat": int(NOW), "exp": int(NOW) + 60}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


# --- valid tokens -------------------------------------------------------------------


def test_issued_token_authenticates(authn):
    identity = authn.authenticate(issue_token(SECRET, "admin", "ops", 300, now=NOW))
    assert (identity.subject, identity.role, identity.kind, identity.key_name) == ("ops", "admin", "jwt", None)
    assert identity.expires_at == NOW + 300
    uuid.UUID(identity.session_id)


def test_issue_token_claims_and_algorithm():
    encoded = issue_token(SECRET, "viewer", "v", 10, now=NOW)
    assert jwt.get_unverified_header(encoded)["alg"] == "HS256"
    payload = jwt.decode(encoded, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {"sub": "v", "role": "viewer", "iat": int(NOW), "exp": int(NOW) + 10}


@pytest.mark.parametrize("role, subject, ttl", [("root", "x", 10), ("viewer", "", 10), ("viewer", "x", 0)])
def test_issue_token_refuses_bad_arguments(role, subject, ttl):
    with pytest.raises(ValueError):
        issue_token(SECRET, role, subject, ttl)


def test_sessions_get_distinct_ids(authn):
    encoded = token(claims())
    assert authn.authenticate(encoded).session_id != authn.authenticate(encoded).session_id


def test_iat_is_optional(authn):
    assert authn.authenticate(token(claims(iat=None))).role == "operator"


# --- tampering ------------------------------------------------------------------------


def test_changed_payload_with_original_signature(authn):
    header, _, signature = token(claims(role="viewer")).split(".")
    forged = ".".join([header, b64json(claims(role="admin")), signature])
    assert rejected(authn, forged) == "invalid token signature"


def test_flipped_payload_byte(authn):
    header, payload, signature = token(claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=="))
    raw[raw.index(b"alice")] ^= 0x01  # 'alice' -> '`lice': still valid JSON
    forged = ".".join([header, b64(bytes(raw)), signature])
    assert rejected(authn, forged) == "invalid token signature"


def test_signed_with_another_key(authn):
    assert rejected(authn, token(claims(), secret="x" * 64)) == "invalid token signature"


def test_alg_none(authn):
    unsigned = b64json({"alg": "none", "typ": "JWT"}) + "." + b64json(claims(role="admin")) + "."
    assert "algorithm" in rejected(authn, unsigned)


def test_alg_none_with_a_signature_attached(authn):
    _, _, signature = token(claims()).split(".")
    forged = b64json({"alg": "none"}) + "." + b64json(claims(role="admin")) + "." + signature
    assert "algorithm" in rejected(authn, forged)


def test_hs512_with_the_right_secret(authn):
    assert "algorithm" in rejected(authn, token(claims(), algorithm="HS512"))


def test_rs256_header_over_an_hmac_signature(authn):
    # Key confusion: claim RS256 but sign with HMAC, hoping the verifier uses the secret as a public key.
    import hashlib
    import hmac

    signing_input = b64json({"alg": "RS256", "typ": "JWT"}) + "." + b64json(claims(role="admin"))
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert "algorithm" in rejected(authn, signing_input + "." + b64(signature))


def test_real_rs256_token(authn):
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "algorithm" in rejected(authn, token(claims(), secret=private, algorithm="RS256"))


@pytest.mark.parametrize(
    "garbage", ["x", "a.b", "a.b.c", "...", "eyJ.eyJ.sig", "Bearer abc", "\x00\x01", "é.é.é", "a" * 9000]
)
def test_malformed(authn, garbage):
    rejected(authn, garbage)


def test_empty_or_non_string(authn):
    for value in ("", None, 12):
        with pytest.raises(RpcError) as info:
            authn.authenticate(value)
        assert info.value.code == AUTH_REQUIRED


@pytest.fixture(scope="module")
def shared_authn(tmp_path_factory):
    """One authenticator for property tests (hypothesis reruns the body, not fixtures)."""
    return Authenticator(make_config(tmp_path_factory.mktemp("shared")), clock=Clock(NOW))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(shared_authn, text):
    authn = shared_authn
    try:
        authn.authenticate(text)
    except RpcError as error:
        assert error.code == AUTH_REQUIRED
    else:
        pytest.fail("random text authenticated")


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["sub", "role", "exp", "iat", "nbf", "aud", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=10),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_arbitrary_signed_claims_never_crash(shared_authn, payload):
    authn = shared_authn
    try:
        identity = authn.authenticate(token(payload))
    except RpcError as error:
        assert error.code == AUTH_REQUIRED
        return
    # Accepted: then it must really be a valid token.
    assert payload["role"] in methods.ROLES and isinstance(payload["sub"], str) and payload["sub"]
    assert payload["exp"] > NOW - tokens.LEEWAY
    auth.authenticate_result(identity)  # serialisable expiry


# --- expiry and time claims ------------------------------------------------------------


def test_expiry_with_one_second_leeway(authn, wall):
    encoded = token(claims(exp=int(NOW) + 10))
    wall.now = NOW + 10.9  # past exp, inside the leeway
    assert authn.authenticate(encoded).role == "operator"
    wall.now = NOW + 11.0  # exp + 1 s: the leeway is over
    assert rejected(authn, encoded) == "token expired"


def test_long_expired(authn):
    assert rejected(authn, token(claims(exp=int(NOW) - 3600))) == "token expired"


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_not_yet_valid(authn, wall, claim):
    encoded = token(claims(**{claim: int(NOW) + 5}))
    assert rejected(authn, encoded) == "token not yet valid"
    wall.now = NOW + 4.0  # 1 s before, inside the leeway
    assert authn.authenticate(encoded).role == "operator"


def test_exp_beyond_year_9999(authn):
    assert "range" in rejected(authn, token(claims(exp=10**12)))


@pytest.mark.parametrize("bad", ["true", '"soon"', "[1]", "1e400", "-1e400", "NaN"])
def test_exp_must_be_a_finite_number(authn, bad):
    # Raw JSON, because json.dumps would not write some of these the way an attacker can.
    payload = '{"sub":"alice","role":"admin","exp":%s}' % bad
    rejected(authn, sign_raw(payload))


def sign_raw(payload_json: str) -> str:
    """An HS256 token with the right secret over an arbitrary payload text."""
    import hashlib
    import hmac

    signing_input = b64json({"alg": "HS256", "typ": "JWT"}) + "." + b64(payload_json.encode())
    return signing_input + "." + b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())


def test_sign_raw_produces_valid_tokens(authn):
    # Guards the test above: the same helper with a good exp is accepted.
    assert authn.authenticate(sign_raw('{"sub":"alice","role":"admin","exp":%d}' % (NOW + 5))).role == "admin"


def test_still_valid_follows_expiry(authn, wall):
    identity = authn.authenticate(token(claims(exp=int(NOW) + 30)))
    wall.now = NOW + 30.5
    assert authn.still_valid(identity)
    wall.now = NOW + 31.0
    assert not authn.still_valid(identity)


# --- claims and roles -------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["sub", "role", "exp"])
def test_missing_required_claim(authn, missing):
    assert rejected(authn, token(claims(**{missing: None}))) == f"token lacks the '{missing}' claim"


@pytest.mark.parametrize("role", ["superuser", "Admin", "", 3, ["admin"]])
def test_unknown_role(authn, role):
    reason = rejected(authn, token(claims(role=role)))
    assert "role" in reason


@pytest.mark.parametrize("sub", ["", 7])
def test_bad_subject(authn, sub):
    rejected(authn, token(claims(sub=sub)))


def test_foreign_audience_refused(authn):
    rejected(authn, token(claims(aud="some-other-service")))


# --- results and HTTP headers ------------------------------------------------------------


def test_authenticate_result_for_jwt(authn):
    identity = authn.authenticate(token(claims(role="viewer", exp=1_700_000_060)))
    result = auth.authenticate_result(identity)
    assert result == {
        "authenticated": True,
        "role": "viewer",
        "permissions": methods.permissions("viewer"),
        "expires_at": "2023-11-14T22:14:20Z",
        "session_id": identity.session_id,
    }
    assert "take_snapshot" not in result["permissions"] and "get_camera_list" in result["permissions"]


def test_authenticate_result_for_api_key(authn):
    _, key = authn.keys.create("admin")
    result = auth.authenticate_result(authn.authenticate(key))
    assert result["expires_at"] is None and result["role"] == "admin"
    assert result["permissions"] == methods.permissions("admin")


def test_http_bearer(authn):
    encoded = token(claims())
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert authn.authenticate_http({"Authorization": f"{scheme} {encoded}"}).subject == "alice"


def test_http_api_key_header_any_case(authn):
    name, key = authn.keys.create("viewer", "cam-wall")
    assert authn.authenticate_http({"x-api-key": key}).key_name == name
    assert authn.authenticate_http({"X-API-Key": key}).key_name == name


def test_http_without_credentials(authn):
    assert authn.authenticate_http({}) is None
    assert authn.authenticate_http({"Accept": "*/*"}) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic YWxpY2U6cHc="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-token"},
        {"X-API-Key": ""},
        {"X-API-Key": "csk_nope"},
    ],
)
def test_http_bad_credentials_raise(authn, headers):
    with pytest.raises(RpcError) as info:
        authn.authenticate_http(headers)
    assert info.value.code == AUTH_REQUIRED


def test_http_both_headers_refused(authn):
    _, key = authn.keys.create("viewer")
    with pytest.raises(RpcError):
        authn.authenticate_http({"Authorization": f"Bearer {token(claims())}", "X-API-Key": key})


def test_http_repeated_header_with_websockets_headers(authn):
    from websockets.datastructures import Headers

    headers = Headers()
    headers["Authorization"] = f"Bearer {token(claims())}"
    assert authn.authenticate_http(headers).subject == "alice"
    headers["Authorization"] = "Bearer second"
    with pytest.raises(RpcError):
        authn.authenticate_http(headers)


# --- API keys -------------------------------------------------------------------------------


def test_api_key_lifecycle(authn):
    name, key = authn.keys.create("operator", "door")
    assert re.fullmatch(r"csk_[A-Za-z0-9_-]{43}", key)
    identity = authn.authenticate(key)
    assert (identity.subject, identity.role, identity.kind, identity.key_name, identity.expires_at) == (
        "door",
        "operator",
        "api_key",
        "door",
        None,
    )
    assert authn.still_valid(identity)
    assert authn.keys.revoke("door") is True
    assert authn.keys.revoke("door") is False
    assert rejected(authn, key) == "unknown or revoked API key"


def test_store_holds_only_a_hash(tmp_path, authn):
    _, key = authn.keys.create("viewer")
    text = (tmp_path / "state" / apikeys.KEYS_FILE).read_text()
    assert key not in text and key[4:] not in text
    assert apikeys.hash_key(key) in text
    assert stat.S_IMODE(os.stat(tmp_path / "state" / apikeys.KEYS_FILE).st_mode) == 0o600


def test_unknown_and_malformed_keys(authn):
    assert rejected(authn, "csk_" + "A" * 43) == "unknown or revoked API key"
    assert rejected(authn, "csk_short") == "malformed API key"


def test_key_names(authn):
    assert authn.keys.create("viewer")[0] == "viewer-1"
    assert authn.keys.create("viewer")[0] == "viewer-2"
    authn.keys.create("admin", "viewer-3")
    assert authn.keys.create("viewer")[0] == "viewer-4"
    with pytest.raises(apikeys.KeyStoreError, match="already exists"):
        authn.keys.create("viewer", "viewer-1")
    for bad in ("", "-x", "a/b", "x" * 65, "ä"):
        with pytest.raises(apikeys.KeyStoreError):
            authn.keys.create("viewer", bad)
    with pytest.raises(apikeys.KeyStoreError, match="unknown role"):
        authn.keys.create("root")


def test_revoked_names_stay_taken(authn):
    authn.keys.create("viewer", "k")
    authn.keys.revoke("k")
    with pytest.raises(apikeys.KeyStoreError):
        authn.keys.create("viewer", "k")


def test_revoke_unknown_name(authn):
    with pytest.raises(apikeys.KeyStoreError, match="no API key named"):
        authn.keys.revoke("ghost")


def test_list_shows_no_secrets(authn):
    authn.keys.create("viewer", "a")
    authn.keys.create("admin", "b")
    authn.keys.revoke("a")
    listed = authn.keys.list()
    assert [(k["name"], k["role"], k["revoked"]) for k in listed] == [("a", "viewer", True), ("b", "admin", False)]
    assert all(set(k) == {"name", "role", "created", "revoked", "revoked_at"} for k in listed)
    assert listed[0]["revoked_at"].endswith("Z") and listed[1]["revoked_at"] is None


def test_revocation_by_another_process_noticed_within_interval(tmp_path, authn, mono):
    name, key = authn.keys.create("operator")
    identity = authn.authenticate(key)
    cli = KeyStore(tmp_path / "state" / apikeys.KEYS_FILE)  # the CLI's own instance
    mono.now += 5
    assert authn.still_valid(identity)  # re-read: still active
    cli.revoke(name)
    mono.now += 0.5  # within the interval the cached answer may stand
    assert authn.still_valid(identity)
    mono.now += apikeys.KeyStore.REFRESH_INTERVAL  # one interval later it must be gone
    assert not authn.still_valid(identity)


def test_new_key_from_another_process_works_at_once(tmp_path, authn, mono):
    authn.keys.create("viewer", "first")
    authn.still_valid(authn.authenticate(authn.keys.create("viewer", "warm")[1]))
    _, key = KeyStore(tmp_path / "state" / apikeys.KEYS_FILE).create("admin", "late")
    assert authn.authenticate(key).role == "admin"  # no clock advance needed


def test_change_noticed_even_with_identical_mtime(tmp_path, authn, mono):
    path = tmp_path / "state" / apikeys.KEYS_FILE
    name, key = authn.keys.create("viewer")
    identity = authn.authenticate(key)
    before = os.stat(path)
    KeyStore(path).revoke(name)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    mono.now += apikeys.KeyStore.REFRESH_INTERVAL
    assert not authn.still_valid(identity)


def test_deleted_store_revokes_everything(tmp_path, authn, mono):
    _, key = authn.keys.create("viewer")
    identity = authn.authenticate(key)
    os.unlink(tmp_path / "state" / apikeys.KEYS_FILE)
    mono.now += apikeys.KeyStore.REFRESH_INTERVAL
    assert not authn.still_valid(identity)


def test_recreated_name_does_not_revive_old_session(tmp_path, authn, mono):
    path = tmp_path / "state" / apikeys.KEYS_FILE
    _, key = authn.keys.create("viewer", "cam")
    identity = authn.authenticate(key)
    os.unlink(path)  # an operator wipes the store by hand...
    KeyStore(path).create("viewer", "cam")  # ...and reuses the name for a new key
    mono.now += apikeys.KeyStore.REFRESH_INTERVAL
    assert not authn.still_valid(identity)


def test_corrupt_store_fails_closed_and_is_not_overwritten(tmp_path, authn, mono):
    path = tmp_path / "state" / apikeys.KEYS_FILE
    _, key = authn.keys.create("viewer")
    identity = authn.authenticate(key)
    path.write_text("{not json")
    mono.now += apikeys.KeyStore.REFRESH_INTERVAL
    assert not authn.still_valid(identity)
    rejected(authn, key)
    with pytest.raises(apikeys.KeyStoreError, match="corrupt"):
        KeyStore(path).create("viewer")
    assert path.read_text() == "{not json"


# --- the secret -------------------------------------------------------------------------------


def test_configured_secret_wins(tmp_path):
    cfg = make_config(tmp_path)
    assert load_or_create_secret(cfg) == SECRET
    assert not (tmp_path / "state" / tokens.SECRET_FILE).exists()


def test_secret_from_environment(tmp_path):
    cfg = config.load(
        overrides={"runtime.state_dir": str(tmp_path), "runtime.transport": "tcp"},
        environ={"CAMSERVICE_JWT_SECRET": "e" * 32},
    )
    assert load_or_create_secret(cfg) == "e" * 32


def test_short_configured_secret_refused(tmp_path):
    with pytest.raises(config.ConfigError, match="security.jwt_secret"):
        load_or_create_secret(make_config(tmp_path, secret="short"))


def test_generated_secret_private_and_reused(tmp_path):
    cfg = make_config(tmp_path, secret=None)
    first = load_or_create_secret(cfg)
    path = tmp_path / "state" / tokens.SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) >= 64
    assert load_or_create_secret(cfg) == first
    assert os.listdir(tmp_path / "state") == [tokens.SECRET_FILE]  # no temporary files left
    # A token issued by one process (the CLI) is accepted by another (a gateway).
    assert Authenticator(cfg).authenticate(issue_token(first, "viewer", "x", 60)).role == "viewer"


def test_empty_secret_file_refused(tmp_path):
    cfg = make_config(tmp_path, secret=None)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / tokens.SECRET_FILE).write_text("\n")
    with pytest.raises(config.ConfigError):
        load_or_create_secret(cfg)


def _secret_in_child(state_dir: str, barrier, queue) -> None:
    cfg = config.load(overrides={"runtime.state_dir": state_dir, "runtime.transport": "tcp"}, environ={})
    barrier.wait()
    queue.put(load_or_create_secret(cfg))


def test_concurrent_first_start_agrees_on_one_secret(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    count = 8
    barrier, queue = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=_secret_in_child, args=(str(tmp_path / "state"), barrier, queue)) for _ in range(count)]
    for proc in procs:
        proc.start()
    secrets_seen = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert len(set(secrets_seen)) == 1
    assert secrets_seen[0] == (tmp_path / "state" / tokens.SECRET_FILE).read_text().strip()


# --- identities ---------------------------------------------------------------------------------


def test_identity_is_frozen_and_hides_key_hash(authn):
    _, key = authn.keys.create("viewer")
    identity = authn.authenticate(key)
    with pytest.raises(AttributeError):
        identity.role = "admin"
    assert identity.key_hash not in repr(identity)
    assert identity.caller() == {"sub": identity.subject, "role": "viewer", "kind": "api_key"}
    assert isinstance(Identity("s", "viewer", None, "jwt").session_id, str)


# --- cost of the per-request check (pytest --benchmark-enable) -----------------------------------


def test_bench_still_valid_api_key(benchmark, tmp_path):
    authn = Authenticator(make_config(tmp_path))  # real clocks: includes the once-a-second stat
    identity = authn.authenticate(authn.keys.create("viewer")[1])
    assert benchmark(authn.still_valid, identity) is True


def test_bench_still_valid_jwt(benchmark, tmp_path):
    authn = Authenticator(make_config(tmp_path))
    identity = authn.authenticate(issue_token(SECRET, "viewer", "x", 3600))
    assert benchmark(authn.still_valid, identity) is True


def test_bench_authenticate_jwt(benchmark, tmp_path):
    authn = Authenticator(make_config(tmp_path))
    encoded = issue_token(SECRET, "viewer", "x", 3600)
    assert benchmark(authn.authenticate, encoded).role == "viewer"


def test_bench_authenticate_api_key(benchmark, tmp_path):
    authn = Authenticator(make_config(tmp_path))
    _, key = authn.keys.create("viewer")
    assert benchmark(authn.authenticate, key).role == "viewer"
