"""The page registry: each dashboard page is a :class:`Page` (a path, a title, a handler that
returns the template context and the template name). Feature packages add their own pages::

    from conveyor.web import Page, default_pages

    async def workflows_page(ctx: PageContext) -> tuple[str, dict[str, Any]]:
        rows = ...  # read through ctx.app / ctx.reads; redact with ctx.reads.redactor
        return "my_workflows.html", {"rows": rows}

    pages = [*default_pages(), Page("workflows", "/workflows", "Workflows", workflows_page)]
    dashboard(app, config, pages=pages, template_dirs=["path/to/templates"])

A page's template extends ``base.html`` and fills its ``main`` block. The JSON API and the live
updates apply to every registered page (a page's fragment is re-fetched when anything changes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

    from conveyor.web.actions import Actions
    from conveyor.web.host import DashboardHost
    from conveyor.web.reads import Reads


@dataclass(frozen=True, slots=True)
class PageContext:
    """What a page handler gets: the request, the app (narrow protocol), reads and actions."""

    request: Request
    app: DashboardHost
    reads: Reads
    actions: Actions
    params: dict[str, str]


PageHandler = Callable[[PageContext], Awaitable[tuple[str, dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class Page:
    """One page: ``name`` (unique), ``path`` (under the dashboard's root, may hold
    ``{param}`` parts), ``title`` (shown in the navigation when ``nav``), ``handler``."""

    name: str
    path: str
    title: str
    handler: PageHandler
    nav: bool = True
