"""The dashboard, its JSON API and Prometheus metrics (``pip install 'conveyor[web]'``).

::

    from conveyor.web import DashboardConfig, dashboard, hash_password

    asgi_app = dashboard(app, DashboardConfig(
        users={"ops": hash_password("s3cret")}, secret_key="...", redact={"*": ["password"]},
    ))

Run it with ``conveyor dashboard myproject.tasks:app`` or mount it in any ASGI app (FastAPI:
``api.mount("/jobs", asgi_app)``). See ``docs/dashboard.md`` and ``docs/metrics.md``.
"""

from __future__ import annotations

try:
    import itsdangerous  # noqa: F401
    import jinja2  # noqa: F401
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the Conveyor dashboard needs the web extra ({exc.name} is missing): "
        "pip install 'conveyor[web]'"
    ) from None

from conveyor.web.app import Dashboard, dashboard
from conveyor.web.auth import Access, User, hash_password, verify_password
from conveyor.web.config import DashboardConfig
from conveyor.web.pages import Page, PageContext
from conveyor.web.views import default_pages

__all__ = [
    "Access",
    "Dashboard",
    "DashboardConfig",
    "Page",
    "PageContext",
    "User",
    "dashboard",
    "default_pages",
    "hash_password",
    "verify_password",
]
