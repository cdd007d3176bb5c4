"""``camservice token`` and ``camservice keys ...``: credentials from the command line.

These commands only touch files in ``runtime.state_dir`` (the JWT secret and
the API key store), so they work whether or not the service runs; a running
service notices key changes within about a second. Run them as the user the
service runs as: the files are created private (0600) to whoever runs first.

Credentials go to stdout alone (``TOKEN=$(camservice token --role admin)``);
everything else goes to stderr.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import config as config_module
from .apikeys import KeyStore, KeyStoreError
from .methods import ROLES
from .tokens import issue_token, load_or_create_secret

T = TypeVar("T")


def _load(ctx: click.Context) -> config_module.Config:
    path = (ctx.obj or {}).get("config_path")
    try:
        return config_module.load(path)
    except config_module.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _default_subject() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli"


@click.command("token")
@click.option("--role", type=click.Choice(ROLES), required=True, help="Role the token grants.")
@click.option(
    "--ttl", type=click.IntRange(min=1), default=3600, show_default=True, help="Seconds until the token expires."
)
@click.option("--subject", default=None, help="The token's 'sub' claim (default: your user name).")
@click.pass_context
def token_command(ctx: click.Context, role: str, ttl: int, subject: str | None) -> None:
    """Print a JWT signed with the service's secret."""
    config = _load(ctx)
    try:
        secret = load_or_create_secret(config)
    except config_module.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot create the JWT secret in {config.runtime.state_dir}: {exc.strerror}"
        ) from None
    click.echo(issue_token(secret, role, subject or _default_subject(), ttl))


@click.group("keys")
def keys_group() -> None:
    """Create, list and revoke API keys."""


def _store(ctx: click.Context) -> KeyStore:
    return KeyStore.for_config(_load(ctx))


def _store_call(func: Callable[..., T], *args: Any) -> T:
    try:
        return func(*args)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"API key store: {exc.strerror or exc}") from None


@keys_group.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True, help="Role the key grants.")
@click.option("--name", default=None, help="Unique name (default: <role>-<n>).")
@click.pass_context
def keys_create(ctx: click.Context, role: str, name: str | None) -> None:
    """Create an API key and print it (it cannot be shown again)."""
    name, key = _store_call(_store(ctx).create, role, name)
    click.echo(key)
    click.echo(f"API key '{name}' ({role}) created; store it now, it is not shown again.", err=True)


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List API keys (names and roles; keys themselves are never stored)."""
    keys = _store_call(_store(ctx).list)
    if as_json:
        click.echo(json.dumps(keys, indent=2))
        return
    if not keys:
        click.echo("no API keys", err=True)
        return
    width = max(4, *(len(k["name"]) for k in keys))
    click.echo(f"{'NAME':<{width}}  {'ROLE':<8}  {'CREATED':<20}  STATUS")
    for k in keys:
        status = f"revoked {k['revoked_at']}" if k["revoked"] else "active"
        click.echo(f"{k['name']:<{width}}  {k['role']:<8}  {k['created']:<20}  {status}")


@keys_group.command("revoke")
@click.argument("name")
@click.pass_context
def keys_revoke(ctx: click.Context, name: str) -> None:
    """Revoke the API key NAME; connections using it stop working within seconds."""
    if _store_call(_store(ctx).revoke, name):
        click.echo(f"API key '{name}' revoked.", err=True)
    else:
        click.echo(f"API key '{name}' was already revoked.", err=True)


def register(group: click.Group) -> None:
    """Add ``token`` and ``keys`` to the main ``camservice`` group."""
    group.add_command(token_command)
    group.add_command(keys_group)
