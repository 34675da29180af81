"""The web console: server-rendered pages of the control plane, under /console, with a little
JavaScript of our own (no CDN, no bundler) for live updates and confirmations."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from zgate_control.console import pages, signin

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Mount the console's pages and its static files."""
    static = resources.files("zgate_control.console") / "static"
    app.mount("/console/static", StaticFiles(directory=str(static)), name="console-static")
    app.include_router(signin.router)
    for router in pages.ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=303)
