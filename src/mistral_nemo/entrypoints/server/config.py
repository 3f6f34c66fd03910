"""ServerConfig: what the HTTP layer needs to know, separate from the engine's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from mistral_nemo.model.generation_defaults import OPENAI, GenerationDefaults

DEFAULT_MAX_BODY_BYTES = 16 << 20  # 16 MiB: a long conversation fits easily, a flood does not

# Mistral's API names for NeMo: served as aliases when the model is a Tekken (NeMo-family) model.
NEMO_ALIASES = ("open-mistral-nemo", "open-mistral-nemo-2407")

# Paths answered without an API key. Everything else (the /v1 API, tokenizer endpoints) needs one.
PUBLIC_PATHS = frozenset(
    {"/health", "/version", "/metrics", "/", "/favicon.ico"}
    | {"/openapi.json", "/docs", "/docs/oauth2-redirect"}  # the API's description, as vLLM serves it
)
DEFAULT_SHUTDOWN_TIMEOUT = 5.0  # seconds from SIGTERM to exit: in-flight requests get most of it
PUBLIC_PREFIXES = ("/static/",)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None: no authentication
    served_model_names: list[str] = field(default_factory=list)  # empty: the loaded model's own name
    add_nemo_aliases: bool = True  # also answer to open-mistral-nemo(-2407) for a Tekken model
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Sampling for the fields a request leaves out: `serve` sets the loaded model's (generation_config.json,
    # NeMo's 0.3, the embedded model's greedy), as vLLM does; OpenAI's (temperature 1) otherwise.
    sampling_defaults: GenerationDefaults = OPENAI
    public_paths: frozenset[str] = PUBLIC_PATHS
    public_prefixes: tuple[str, ...] = PUBLIC_PREFIXES
    web_page: bool = True  # the chat page at / (static files, no CDN)
    log_requests: bool = True  # one log line per request (logger "mistral_nemo.server")
    # CORS, as vLLM: any origin by default ("*", no credentials); [] sends no CORS headers at all.
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if self.api_key is not None and not self.api_key:
            raise ValueError("the API key must not be empty")
        if not 0.0 < self.shutdown_timeout <= 3600:
            raise ValueError("shutdown_timeout must be in (0, 3600] seconds")

    def is_public(self, path: str) -> bool:
        return path in self.public_paths or path.startswith(self.public_prefixes)
