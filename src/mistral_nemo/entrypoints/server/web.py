"""The web chat page: `/` serves static/index.html and `/static/...` the files beside it.

The files ship inside the package (package-data), so the page works offline: no CDN. Both
paths are public (the page itself holds no data; its API calls carry the user's key).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(str(files("mistral_nemo.entrypoints.server") / "static"))
# The page only talks to its own origin; markdown.js escapes model text, and this is the backstop.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    """StaticFiles that revalidates (no-cache: a new version shows on reload) and sends nosniff."""

    def file_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount_web(app: FastAPI) -> None:
    """Serve the chat page at `/` and its files at `/static/`."""
    index = STATIC_DIR / "index.html"

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=SECURITY_HEADERS)

    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
