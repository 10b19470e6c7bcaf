"""The dashboard as an ASGI app (Starlette): pages, actions, the JSON API, live updates,
metrics and health, behind one access check.

Every route but ``/healthz``, ``/readyz``, ``/login``, ``/static`` (and ``/metrics`` with
``public_metrics``) needs an authenticated user; every action (any POST but the login) also
needs write access (not ``read_only``) and a CSRF token, and is refused from another site.
"""

from __future__ import annotations

import inspect
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.errors import (
    ConfigurationError,
    JobNotFoundError,
)
from conveyor.web import api, fmt
from conveyor.web.actions import Actions
from conveyor.web.auth import SESSION_COOKIE, Access, Sessions, User, check_login
from conveyor.web.config import DashboardConfig
from conveyor.web.errors import Refused, error_status
from conveyor.web.host import DashboardHost
from conveyor.web.live import LiveHub
from conveyor.web.metrics import StoreCollector, store_exposition
from conveyor.web.pages import Page, PageContext
from conveyor.web.reads import BadRequest, Reads
from conveyor.web.redact import Redactor
from conveyor.web.views import default_pages

log = logging.getLogger("conveyor.web")
CSRF_COOKIE = "conveyor_csrf"
FLASH_COOKIE = "conveyor_flash"
MAX_BODY = 64 * 1024

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)


class SecurityHeaders:
    """Adds the security headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = {
                    b"content-security-policy": CSP.encode(),
                    b"x-content-type-options": b"nosniff",
                    b"x-frame-options": b"DENY",
                    b"referrer-policy": b"same-origin",
                    b"cross-origin-opener-policy": b"same-origin",
                    b"permissions-policy": b"camera=(), microphone=(), geolocation=()",
                    b"cache-control": b"no-store",
                }
                if scope.get("scheme") == "https":
                    extra[b"strict-transport-security"] = b"max-age=31536000"
                headers += [(k, v) for k, v in extra.items() if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, wrapped)


class Dashboard:
    """One dashboard over one app. :meth:`asgi` is the ASGI app to run or mount."""

    def __init__(
        self,
        app: DashboardHost,
        config: DashboardConfig | None = None,
        *,
        pages: Sequence[Page] | None = None,
        template_dirs: Sequence[str | Path] = (),
    ) -> None:
        self.app = app
        self.config = config = config or DashboardConfig()
        if not config.users and config.auth is None and not config.anonymous:
            raise ConfigurationError(
                "the dashboard needs users (DashboardConfig(users=...)), an auth hook "
                "(auth=...), or anonymous=True for a trusted local network"
            )
        if config.secret_key is None and config.users:
            log.warning(
                "no secret_key: sessions are signed with a random key and end when this "
                "process restarts (and do not work across processes)"
            )
        self.secret = config.secret_key or secrets.token_urlsafe(32)
        self.sessions = Sessions(self.secret, config.session_max_age)
        self.redactor = Redactor(config.redact, self._signature)
        self.reads = Reads(app, self.redactor, config.count_cap)
        self.actions = Actions(app, config.bulk_limit)
        self.live = LiveHub(self.reads, config.live_interval)
        self.metrics = StoreCollector(self.reads)
        self.pages = list(pages if pages is not None else default_pages())
        names = [p.name for p in self.pages]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"page names must be unique: {names}")
        loaders: list[Any] = [FileSystemLoader([str(d) for d in template_dirs])]
        loaders.append(PackageLoader("conveyor.web", "templates"))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(default=True, default_for_string=True),
            enable_async=False,
        )
        fmt.install(self.env)

    def _signature(self, task: str) -> inspect.Signature | None:
        t = self.app.tasks.get(task)
        if t is None:
            return None
        try:
            return inspect.signature(t.fn)
        except (TypeError, ValueError):
            return None

    # -- access ---------------------------------------------------------------------------
    async def identify(self, request: Request) -> User | None:
        """The request's user: the auth hook's answer, a valid session, valid Basic auth."""
        cfg = self.config
        if cfg.auth is not None:
            found = cfg.auth(request)
            if inspect.isawaitable(found):
                found = await found
            return found if isinstance(found, User) else None
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is not None and session["u"] in cfg.users:
            return User(session["u"])
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic ") and cfg.users:
            import base64
            import binascii

            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return User(name) if check_login(dict(cfg.users), name, password) else None
        if cfg.anonymous:
            return User("anonymous")
        return None

    def access(self, user: User) -> Access:
        if user.access is Access.FORBIDDEN:
            return Access.FORBIDDEN
        return Access.READ_ONLY if self.config.read_only else user.access

    def check_csrf(self, request: Request, sent: str | None) -> None:
        """Refuse a cross-site or token-less mutation (Sidekiq's and Flower's history)."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise Refused(403, "cross-site requests cannot change anything")
        origin = request.headers.get("origin")
        if origin and origin != "null":
            host = request.headers.get("host", "")
            if origin.split("://", 1)[-1] != host:
                raise Refused(403, "the request's Origin is not this dashboard")
        cookie = request.cookies.get(CSRF_COOKIE)
        if cookie and sent and secrets.compare_digest(cookie, sent) and self._valid_csrf(cookie):
            return
        is_json = request.headers.get("content-type", "").startswith("application/json")
        if (
            is_json
            and request.headers.get("authorization")
            and SESSION_COOKIE not in (request.cookies)
        ):
            return  # an API client with credentials in a header (no ambient cookie)
        raise Refused(403, "missing or wrong CSRF token; reload the page and try again")

    def _new_csrf(self) -> str:
        import hashlib
        import hmac

        nonce = secrets.token_urlsafe(18)
        mac = hmac.new(self.secret.encode(), nonce.encode(), hashlib.sha256).hexdigest()[:20]
        return f"{nonce}.{mac}"

    def _valid_csrf(self, token: str) -> bool:
        import hashlib
        import hmac

        nonce, _, mac = token.partition(".")
        good = hmac.new(self.secret.encode(), nonce.encode(), hashlib.sha256).hexdigest()[:20]
        return bool(mac) and secrets.compare_digest(mac, good)

    def secure(self, request: Request) -> bool:
        if self.config.secure_cookies is not None:
            return self.config.secure_cookies
        return request.url.scheme == "https"

    def cookie_path(self, request: Request) -> str:
        return (request.scope.get("root_path") or "") + "/"

    # -- rendering ------------------------------------------------------------------------
    def base(self, request: Request) -> str:
        return str(request.scope.get("root_path") or "")

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        user: User | None,
        status: int = 200,
    ) -> HTMLResponse:
        flash = request.cookies.get(FLASH_COOKIE)
        message = None
        if flash:
            try:
                message = self.sessions._s.loads(flash, max_age=60)
            except Exception:  # noqa: BLE001 - a bad flash cookie is ignored
                message = None
        token = request.cookies.get(CSRF_COOKIE)
        fresh = not (token and self._valid_csrf(token))
        if fresh:
            token = self._new_csrf()
        page = self.env.get_template(template).render(
            **context,
            base=self.base(request),
            title=self.config.title,
            user=user,
            read_only=user is None or self.access(user) is not Access.ALL,
            csrf=token,
            nav=[p for p in self.pages if p.nav],
            current=request.url.path,
            flash=message if isinstance(message, dict) else None,
            fragment=request.headers.get("x-conveyor-fragment") == "1",
        )
        response = HTMLResponse(page, status_code=status)
        if flash:
            response.delete_cookie(FLASH_COOKIE, path=self.cookie_path(request))
        if fresh:
            self._set_csrf(request, response, str(token))
        return response

    def _set_csrf(self, request: Request, response: Response, token: str) -> None:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            path=self.cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    def flash_redirect(self, request: Request, to: str, message: str, ok: bool) -> Response:
        response = RedirectResponse(to, status_code=303)
        value = self.sessions._s.dumps({"message": message, "ok": ok})
        response.set_cookie(
            FLASH_COOKIE,
            value,
            path=self.cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )
        return response

    # -- route wrappers -------------------------------------------------------------------
    def page_route(self, page: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            user = await self.identify(request)
            if user is None:
                target = quote(
                    request.url.path + (f"?{request.url.query}" if request.url.query else "")
                )
                return RedirectResponse(f"{self.base(request)}/login?next={target}", 303)
            if self.access(user) is Access.FORBIDDEN:
                return self.render(
                    request,
                    "error.html",
                    {"status": 403, "message": "forbidden"},
                    user=user,
                    status=403,
                )
            ctx = PageContext(
                request, self.app, self.reads, self.actions, dict(request.query_params)
            )
            try:
                template, context = await page.handler(ctx)
            except Exception as exc:
                status, message = error_status(exc)
                if status == 500:
                    log.exception("dashboard page %s failed", page.name)
                return self.render(
                    request,
                    "error.html",
                    {"status": status, "message": message},
                    user=user,
                    status=status,
                )
            return self.render(request, template, {**context, "page": page.name}, user=user)

        return endpoint

    async def authorize(self, request: Request, *, write: bool) -> User:
        user = await self.identify(request)
        if user is None:
            raise Refused(401, "authentication required")
        access = self.access(user)
        if access is Access.FORBIDDEN:
            raise Refused(403, "forbidden")
        if write and access is not Access.ALL:
            raise Refused(403, "the dashboard is read-only")
        return user

    async def read_body(self, request: Request) -> dict[str, str]:
        """A small form or JSON object body, as strings."""
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise BadRequest("request body too large")
        if not raw:
            return {}
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                data = json.loads(raw)
            except ValueError:
                raise BadRequest("the body is not valid JSON") from None
            if not isinstance(data, dict):
                raise BadRequest("the body must be a JSON object")
            return {str(k): "" if v is None else str(v) for k, v in data.items()}
        try:
            parsed = parse_qs(raw.decode(), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("the form body cannot be read") from None
        return {k: v[-1] for k, v in parsed.items()}

    def action_route(
        self, run: Callable[[Request, dict[str, str]], Awaitable[dict[str, Any]]], back: str
    ) -> Callable[[Request], Awaitable[Response]]:
        """A form action: authorize, check CSRF, run, redirect back with a message."""

        async def endpoint(request: Request) -> Response:
            try:
                await self.authorize(request, write=True)
                form = await self.read_body(request)
                self.check_csrf(request, form.get("csrf") or request.headers.get("x-csrf-token"))
                result = await run(request, form)
                message, ok = str(result.get("message", "done")), True
            except Refused as exc:
                return PlainTextResponse(str(exc), status_code=exc.status)
            except Exception as exc:
                status, message = error_status(exc)
                if status == 500:
                    log.exception("dashboard action failed")
                    return PlainTextResponse("internal error", status_code=500)
                ok = False
            to = form.get("next") if "form" in locals() else None
            target = to if to and to.startswith("/") and not to.startswith("//") else back
            return self.flash_redirect(request, self.base(request) + target, message, ok)

        return endpoint

    # -- special routes -------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        if self.config.auth is not None:
            return PlainTextResponse("this dashboard uses its own sign-in", status_code=404)
        return self.render(
            request,
            "login.html",
            {"next": _safe_next(request.query_params.get("next")), "error": None},
            user=None,
        )

    async def login(self, request: Request) -> Response:
        if self.config.auth is not None:
            return PlainTextResponse("this dashboard uses its own sign-in", status_code=404)
        try:
            form = await self.read_body(request)
            self.check_csrf(request, form.get("csrf"))
        except (Refused, BadRequest) as exc:
            return PlainTextResponse(str(exc), status_code=getattr(exc, "status", 400))
        name, password = form.get("username", ""), form.get("password", "")
        nxt = _safe_next(form.get("next"))
        if not check_login(dict(self.config.users), name, password):
            return self.render(
                request,
                "login.html",
                {"next": nxt, "error": "wrong user name or password"},
                user=None,
                status=401,
            )
        cookie, _ = self.sessions.issue(name)
        response = RedirectResponse(self.base(request) + nxt, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(self.config.session_max_age),
            path=self.cookie_path(request),
            httponly=True,
            samesite="lax",
            secure=self.secure(request),
        )
        response.delete_cookie(CSRF_COOKIE, path=self.cookie_path(request))  # a fresh token
        return response

    async def logout(self, request: Request) -> Response:
        try:
            form = await self.read_body(request)
            self.check_csrf(request, form.get("csrf"))
        except (Refused, BadRequest) as exc:
            return PlainTextResponse(str(exc), status_code=getattr(exc, "status", 400))
        response = RedirectResponse(self.base(request) + "/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=self.cookie_path(request))
        return response

    async def live_stream(self, request: Request) -> Response:
        try:
            await self.authorize(request, write=False)
        except Refused as exc:
            return PlainTextResponse(str(exc), status_code=exc.status)
        return StreamingResponse(
            self.live.stream(request.is_disconnected),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        if not self.config.public_metrics:
            try:
                await self.authorize(request, write=False)
            except Refused as exc:
                return PlainTextResponse(str(exc), status_code=exc.status)
        try:
            body = await store_exposition(self.metrics)
        except Exception as exc:  # noqa: BLE001 - the store is down: say so
            return PlainTextResponse(f"store unavailable: {exc}", status_code=503)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(self, request: Request) -> Response:
        health = await self.reads.health()
        return JSONResponse(
            {"ok": health["ok"]} | ({} if health["ok"] else {"error": "store unavailable"}),
            status_code=200 if health["ok"] else 503,
        )

    # -- the app --------------------------------------------------------------------------
    def asgi(self) -> ASGIApp:
        """The ASGI app: run it (uvicorn) or mount it (``Mount("/jobs", app=...)``)."""
        routes: list[Any] = [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics_endpoint),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/live", self.live_stream),
            Mount(
                "/static",
                app=StaticFiles(directory=str(resources.files("conveyor.web") / "static")),
                name="static",
            ),
            *api.routes(self),
            *self._action_routes(),
        ]
        routes += [
            Route(p.path, self.page_route(p), methods=["GET"], name=p.name) for p in self.pages
        ]
        starlette = Starlette(routes=routes, exception_handlers={404: _not_found})
        return SecurityHeaders(starlette)

    def _action_routes(self) -> list[Route]:
        acts = self.actions

        async def job_action(request: Request, form: dict[str, str]) -> dict[str, Any]:
            job_id, verb = request.path_params["job_id"], request.path_params["verb"]
            if verb == "retry":
                return await acts.retry(job_id)
            if verb == "cancel":
                return await acts.cancel(job_id)
            if verb == "delete":
                return await acts.delete(job_id)
            raise JobNotFoundError(f"action {verb}")

        async def group_action(request: Request, form: dict[str, str]) -> dict[str, Any]:
            code, queue = form.get("error_code", ""), form.get("queue") or None
            if request.path_params["verb"] == "retry":
                return await acts.retry_group(code, queue)
            return await acts.purge_group(code, queue)

        async def schedule_action(request: Request, form: dict[str, str]) -> dict[str, Any]:
            return await acts.schedule(request.path_params["name"], request.path_params["verb"])

        return [
            Route(
                "/actions/jobs/{job_id}/{verb:str}",
                self.action_route(job_action, "/jobs"),
                methods=["POST"],
            ),
            Route(
                "/actions/dead-letters/{verb:str}",
                self.action_route(group_action, "/dead-letters"),
                methods=["POST"],
            ),
            Route(
                "/actions/schedules/{name}/{verb:str}",
                self.action_route(schedule_action, "/schedules"),
                methods=["POST"],
            ),
        ]


def _safe_next(value: str | None) -> str:
    """A same-site path to go to after logging in (never another host)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("not found", status_code=404)


def dashboard(
    app: DashboardHost,
    config: DashboardConfig | None = None,
    *,
    pages: Sequence[Page] | None = None,
    template_dirs: Sequence[str | Path] = (),
    **options: Any,
) -> ASGIApp:
    """The dashboard of ``app`` as an ASGI app; ``options`` are :class:`DashboardConfig`
    fields (when ``config`` is not given)."""
    if config is None:
        config = DashboardConfig(**options)
    elif options:
        raise TypeError("give either config or DashboardConfig fields, not both")
    return Dashboard(app, config, pages=pages, template_dirs=template_dirs).asgi()
