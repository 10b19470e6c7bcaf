"""``conveyor dashboard APP``: serve the dashboard, its JSON API and ``/metrics``."""

from __future__ import annotations

import os

import click

from conveyor.cli.common import load_app


def _need_web() -> None:
    try:
        import uvicorn  # noqa: F401

        import conveyor.web  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs the web extra ({exc}): pip install 'conveyor[web]'"
        ) from None


@click.command()
@click.argument("app_path", metavar="APP", envvar="CONVEYOR_APP", required=False)
@click.option("--url", help="Store URL when no APP is given (or $CONVEYOR_URL).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8188, show_default=True, help="Port to listen on.")
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="NAME:HASH",
    help="A user and their password hash (see --hash-password); repeat for more. "
    "Also $CONVEYOR_DASHBOARD_USERS, comma-separated.",
)
@click.option(
    "--secret-key",
    envvar="CONVEYOR_DASHBOARD_SECRET",
    help="Signs session cookies (or $CONVEYOR_DASHBOARD_SECRET); keep it stable.",
)
@click.option("--read-only", is_flag=True, help="Refuse every action (retry, cancel, ...).")
@click.option(
    "--redact",
    multiple=True,
    metavar="TASK:FIELD,...",
    help="Show these argument/result fields as ••• ('*' for every task); repeatable.",
)
@click.option("--public-metrics", is_flag=True, help="Serve /metrics without authentication.")
@click.option("--no-auth", is_flag=True, help="No login at all (only on a trusted local network).")
@click.option("--root-path", default="", help="URL prefix when a proxy serves it under a path.")
@click.option(
    "--forwarded-allow-ips",
    default="127.0.0.1",
    show_default=True,
    help="Proxies whose X-Forwarded-Proto/For headers are trusted.",
)
@click.option(
    "--hash-password",
    "hash_only",
    is_flag=True,
    help="Read a password from the prompt, print its hash for --user, and exit.",
)
def dashboard(
    app_path: str | None,
    url: str | None,
    host: str,
    port: int,
    users: tuple[str, ...],
    secret_key: str | None,
    read_only: bool,
    redact: tuple[str, ...],
    public_metrics: bool,
    no_auth: bool,
    root_path: str,
    forwarded_allow_ips: str,
    hash_only: bool,
) -> None:
    """Serve the web dashboard of APP (module:attribute) with its JSON API and metrics.

    Log in with a --user NAME:HASH (make the hash with --hash-password); everything but
    /healthz and /readyz needs it. Mount it in your own ASGI app instead with
    conveyor.web.dashboard(app, ...) (see docs/dashboard.md).
    """
    _need_web()
    from conveyor.web import DashboardConfig, hash_password
    from conveyor.web import dashboard as build

    if hash_only:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
        click.echo(hash_password(password))
        return
    app = load_app(app_path, url)
    entries = [*users, *filter(None, os.environ.get("CONVEYOR_DASHBOARD_USERS", "").split(","))]
    table: dict[str, str] = {}
    for entry in entries:
        name, sep, hashed = entry.partition(":")
        if not sep or not name or not hashed.startswith("scrypt$"):
            raise click.UsageError(
                f"--user must be NAME:HASH with a hash from --hash-password, got {entry[:20]!r}"
            )
        table[name] = hashed
    if not table and not no_auth:
        raise click.UsageError(
            "give at least one --user NAME:HASH (conveyor dashboard --hash-password makes "
            "the hash), or --no-auth on a trusted local network"
        )
    rules: dict[str, list[str]] = {}
    for rule in redact:
        task, sep, fields = rule.rpartition(":")
        if not sep or not fields:
            raise click.UsageError(f"--redact must be TASK:FIELD,..., got {rule!r}")
        rules.setdefault(task, []).extend(f.strip() for f in fields.split(",") if f.strip())
    config = DashboardConfig(
        users=table,
        secret_key=secret_key,
        read_only=read_only,
        redact=rules,
        public_metrics=public_metrics,
        anonymous=no_auth and not table,
    )
    import uvicorn

    asgi = build(app, config)
    click.echo(f"Conveyor dashboard on http://{host}:{port}{root_path}/", err=True)
    uvicorn.run(
        asgi,
        host=host,
        port=port,
        root_path=root_path,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level="warning",
    )
