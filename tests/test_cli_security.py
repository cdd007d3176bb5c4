"""camservice token / keys: the command-line side of credentials."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import click
import jwt
import pytest
from click.testing import CliRunner

from camservice import apikeys, config, tokens
from camservice.auth import Authenticator
from camservice.cli_security import register
from camservice.errors import RpcError
from tests.harness import Clock


def make_group() -> click.Group:
    """The same shape as camservice.cli.main, for tests independent of cli.py."""

    @click.group()
    @click.option("--config", envvar="CAMSERVICE_CONFIG")
    @click.pass_context
    def main(ctx, config):
        ctx.ensure_object(dict)
        ctx.obj["config_path"] = config

    register(main)
    return main


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "camservice.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        runtime:
          state_dir: {tmp_path / "state"}
          transport: tcp
        """)
    )
    return path


@pytest.fixture
def run(config_file):
    group = make_group()
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(
            group, ["--config", str(config_file), *args], env={"CAMSERVICE_JWT_SECRET": "", **(env or {})}
        )

    return invoke


@pytest.fixture
def cfg(config_file):
    return config.load(config_file, environ={})


def test_token_is_accepted_by_the_service(run, cfg, tmp_path):
    result = run("token", "--role", "operator", "--subject", "robot", "--ttl", "120")
    assert result.exit_code == 0, result.output
    encoded = result.stdout.strip()
    assert "\n" not in encoded
    identity = Authenticator(cfg).authenticate(encoded)
    assert (identity.role, identity.subject) == ("operator", "robot")
    claims = jwt.decode(encoded, tokens.load_or_create_secret(cfg), algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120
    assert (tmp_path / "state" / tokens.SECRET_FILE).exists()  # generated on first use


def test_token_defaults(run, cfg):
    encoded = run("token", "--role", "viewer").stdout.strip()
    claims = jwt.decode(encoded, tokens.load_or_create_secret(cfg), algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["sub"]


def test_token_uses_the_configured_secret(run, cfg):
    secret = "k" * 48
    encoded = run("token", "--role", "admin", env={"CAMSERVICE_JWT_SECRET": secret}).stdout.strip()
    assert jwt.decode(encoded, secret, algorithms=["HS256"])["role"] == "admin"


@pytest.mark.parametrize("args", [["token"], ["token", "--role", "root"], ["token", "--role", "viewer", "--ttl", "0"]])
def test_token_bad_arguments(run, args):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""


def test_token_with_a_short_configured_secret(run):
    result = run("token", "--role", "viewer", env={"CAMSERVICE_JWT_SECRET": "short"})
    assert result.exit_code == 1
    assert "security.jwt_secret" in result.output and result.stdout == ""


def test_bad_config_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 99999\n")
    result = CliRunner().invoke(make_group(), ["--config", str(bad), "keys", "list"])
    assert result.exit_code == 1
    assert "server.port" in result.output and "Traceback" not in result.output


def test_config_from_environment(config_file, tmp_path):
    result = CliRunner().invoke(
        make_group(), ["keys", "create", "--role", "viewer"], env={"CAMSERVICE_CONFIG": str(config_file)}
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "state" / apikeys.KEYS_FILE).exists()


def test_key_lifecycle(run, cfg):
    mono = Clock(0.0)
    gateway = Authenticator(cfg, monotonic=mono)

    created = run("keys", "create", "--role", "operator", "--name", "front-door")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("csk_") and "front-door" in created.stderr and key not in created.stderr
    identity = gateway.authenticate(key)
    assert (identity.role, identity.key_name) == ("operator", "front-door")

    listed = run("keys", "list", "--json")
    assert json.loads(listed.stdout) == [
        {
            "name": "front-door",
            "role": "operator",
            "created": listed_created(listed),
            "revoked": False,
            "revoked_at": None,
        }
    ]
    assert key not in listed.stdout

    revoked = run("keys", "revoke", "front-door")
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    mono.now += apikeys.KeyStore.REFRESH_INTERVAL
    assert not gateway.still_valid(identity)
    with pytest.raises(RpcError):
        gateway.authenticate(key)
    assert json.loads(run("keys", "list", "--json").stdout)[0]["revoked"] is True

    again = run("keys", "revoke", "front-door")
    assert again.exit_code == 0 and "already" in again.output


def listed_created(result) -> str:
    created = json.loads(result.stdout)[0]["created"]
    assert created.endswith("Z")
    return created


def test_keys_create_default_names_and_duplicates(run):
    assert run("keys", "create", "--role", "viewer").exit_code == 0
    assert "viewer-1" in run("keys", "list").stdout
    dup = run("keys", "create", "--role", "admin", "--name", "viewer-1")
    assert dup.exit_code == 1 and "already exists" in dup.output and dup.stdout == ""


def test_keys_create_bad_name(run):
    result = run("keys", "create", "--role", "viewer", "--name", "../x")
    assert result.exit_code == 1 and result.stdout == ""


def test_keys_list_table(run):
    run("keys", "create", "--role", "viewer", "--name", "a-rather-long-key-name")
    run("keys", "create", "--role", "admin", "--name", "b")
    run("keys", "revoke", "b")
    lines = run("keys", "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CREATED", "STATUS"]
    assert lines[1].split()[:2] == ["a-rather-long-key-name", "viewer"] and lines[1].endswith("active")
    assert lines[2].split()[:2] == ["b", "admin"] and "revoked" in lines[2]


def test_keys_list_empty(run):
    result = run("keys", "list")
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(run("keys", "list", "--json").stdout) == []


def test_revoke_unknown_name(run):
    result = run("keys", "revoke", "ghost")
    assert result.exit_code == 1
    assert "no API key named 'ghost'" in result.output


def test_corrupt_store_is_reported_not_overwritten(run, tmp_path):
    (tmp_path / "state").mkdir()
    store = tmp_path / "state" / apikeys.KEYS_FILE
    store.write_text("[]")
    result = run("keys", "create", "--role", "viewer")
    assert result.exit_code == 1 and "corrupt" in result.output
    assert store.read_text() == "[]"


# --- the real console script ------------------------------------------------------------


def _real_cli_exists() -> bool:
    return shutil.which("camservice") is not None and importlib.util.find_spec("camservice.cli") is not None


def test_console_script_end_to_end(config_file, tmp_path):
    """create -> authenticate -> revoke in separate OS processes, as an operator would.

    Uses the installed ``camservice`` script once camservice/cli.py exists (so
    this fails if cli.py forgets to call register()); until then a stand-in
    process built the same way (main group + register()).
    """
    if _real_cli_exists():
        command = ["camservice"]
    else:
        stub = textwrap.dedent("""\
            import click
            from camservice.cli_security import register

            @click.group()
            @click.option("--config", envvar="CAMSERVICE_CONFIG")
            @click.pass_context
            def main(ctx, config):
                ctx.ensure_object(dict)
                ctx.obj["config_path"] = config

            register(main)
            main()
            """)
        command = [sys.executable, "-c", stub]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMSERVICE_")}
    env["CAMSERVICE_CONFIG"] = str(config_file)

    def cli(*args, check=True):
        proc = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=60)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    key = cli("keys", "create", "--role", "admin", "--name", "ops").stdout.strip()
    encoded = cli("token", "--role", "viewer").stdout.strip()
    gateway = Authenticator(config.load(config_file, environ={}))
    assert gateway.authenticate(key).role == "admin"
    assert gateway.authenticate(encoded).role == "viewer"
    assert oct(os.stat(tmp_path / "state" / apikeys.KEYS_FILE).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "state" / tokens.SECRET_FILE).st_mode & 0o777) == "0o600"

    cli("keys", "revoke", "ops")
    with pytest.raises(RpcError):
        gateway.authenticate(key)
    missing = cli("keys", "revoke", "ops-typo", check=False)
    assert missing.returncode == 1 and "no API key named" in missing.stderr
