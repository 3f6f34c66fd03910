"""The OpenAI- and Mistral-compatible HTTP server (`mistral-nemo serve`).

from mistral_nemo.entrypoints.server import ServerConfig, build_app
app = build_app(async_engine_or_loader, ServerConfig(api_key="..."))
"""

from __future__ import annotations

from mistral_nemo.entrypoints.server.app import build_app
from mistral_nemo.entrypoints.server.config import ServerConfig

__all__ = ["ServerConfig", "build_app"]
