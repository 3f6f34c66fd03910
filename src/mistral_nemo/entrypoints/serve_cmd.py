"""`mistral-nemo serve`: the OpenAI- and Mistral-compatible HTTP API (FastAPI + uvicorn).

The server listens at once and loads the model in the background: /health answers 503 until
the model is ready, then 200. A model that fails to load stops the server with its reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.entrypoints.model_options import (
    add_engine_arguments,
    add_model_argument,
    engine_config_from_args,
    positive_int,
    size_argument,
)
from mistral_nemo.entrypoints.remote_chat import API_KEY_ENV
from mistral_nemo.entrypoints.serve_lora import add_lora_arguments, split_lora_arguments
from mistral_nemo.entrypoints.tensor_parallel_options import TensorParallelLaunch

DEFAULT_SHUTDOWN_TIMEOUT = 5.0  # the server's own default (server/config.py)
LOST_RANK_GRACE = 2.0  # seconds of 503 answers after a tensor-parallel rank dies, before the server exits

if TYPE_CHECKING:
    from fastapi import FastAPI

    from mistral_nemo.engine.async_engine import AsyncLLMEngine
    from mistral_nemo.entrypoints.server import ServerConfig


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the model over an OpenAI- and Mistral-compatible HTTP API",
        description="Serve a model at /v1/chat/completions, /v1/completions, /v1/models, /metrics ...",
    )
    add_model_argument(parser, lora=False)
    add_lora_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; unset: no key needed)",
    )
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=[],
        metavar="NAME",
        help="the model name(s) clients use (default: the model's own name; a NeMo model also "
        "answers to open-mistral-nemo and open-mistral-nemo-2407). Put MODEL before this flag",
    )
    add_engine_arguments(parser)
    parser.add_argument(
        "--max-num-seqs",
        type=positive_int,
        default=EngineConfig.max_num_seqs,
        help=f"sequences running at once (default {EngineConfig.max_num_seqs})",
    )
    parser.add_argument(
        "--max-queue",
        type=positive_int,
        default=EngineConfig.max_queue,
        help=f"waiting sequences before answering 503 (default {EngineConfig.max_queue})",
    )
    parser.add_argument(
        "--max-body-size",
        type=size_argument,
        metavar="SIZE",
        help="request body limit (default: the server's, 16MiB)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, exit within this many seconds; requests still running near the end get "
        f"an error naming the shutdown; a second signal exits at once (default {DEFAULT_SHUTDOWN_TIMEOUT:g})",
    )
    parser.add_argument(
        "--allowed-origins",
        nargs="*",
        default=["*"],
        metavar="ORIGIN",
        help="browser origins allowed by CORS, as vLLM (default: * = any; none given: no CORS headers)",
    )
    parser.add_argument(
        "--tensor-parallel-size",
        type=positive_int,
        metavar="N",
        help="split the model over N processes (ranks) joined by torch.distributed, each holding 1/N of "
        "the weights and KV cache (gloo on CPU, NCCL on GPUs); started here, or by torchrun "
        "(default: torchrun's WORLD_SIZE, else 1)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--replicas",
        type=positive_int,
        metavar="N",
        help="serve N full engine replicas on Ray Serve behind one endpoint, a conversation sticking to "
        "one replica; with --tensor-parallel-size M each replica runs M ranks "
        "(needs the ray extra: pip install 'mistral-nemo[ray]')",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --replicas: the Ray cluster to join (e.g. ray://head:10001 or auto; default: start a "
        "local one on this machine)",
    )
    parser.set_defaults(run=run)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    config = engine_config_from_args(args, max_num_seqs=args.max_num_seqs, max_queue=args.max_queue)
    num_loras = len(getattr(args, "lora_requests", ()))  # set by check_args
    if num_loras:  # every named adapter stays loaded: one slot each
        config.enable_lora, config.max_loras = True, num_loras
    return config


def model_from_names(args: argparse.Namespace) -> None:
    """`serve --served-model-name nemo /path/to/model`: the flag takes several names, so argparse hands
    it the path too. A last name that is an existing file or folder, with no MODEL given, is the model."""
    names = args.served_model_name
    if args.model is not None or not names or not Path(names[-1]).expanduser().exists():
        return
    if len(names) == 1:
        raise ValueError(
            f"--served-model-name {names[0]} names an existing path: give MODEL first "
            f"(mistral-nemo serve {names[0]} --served-model-name NAME)"
        )
    args.model, args.served_model_name = names[-1], names[:-1]


def server_config(args: argparse.Namespace) -> ServerConfig:
    from mistral_nemo.entrypoints.server import ServerConfig

    return ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        served_model_names=list(args.served_model_name),
        allowed_origins=list(args.allowed_origins),
        shutdown_timeout=args.shutdown_timeout,
        **({"max_body_bytes": args.max_body_size} if args.max_body_size is not None else {}),
    )


def check_args(args: argparse.Namespace) -> None:
    """The checks made before anything starts: bad flags fail at once, not in a replica."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.ray_address is not None and args.replicas is None:
        raise ValueError("--ray-address needs --replicas N (the number of engine replicas to deploy)")
    if args.replicas is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--replicas starts its own ranks in each replica: run it without torchrun")
    model_from_names(args)
    if args.model is not None and not Path(args.model).expanduser().exists():
        from mistral_nemo.model.loading import detect_format

        detect_format(Path(args.model).expanduser())  # raises "model not found", with the download hint
    # args.lora: the one adapter merged into the base, if any; args.lora_requests: those served by name
    args.lora, args.lora_requests = split_lora_arguments(args)


def server_app(
    args: argparse.Namespace,
    on_load_error: Callable[[BaseException], None] | None = None,
    parallel: TensorParallelLaunch | None = None,
    on_rank_lost: Callable[[str], None] | None = None,
    on_engine: Callable[[AsyncLLMEngine], None] | None = None,
) -> FastAPI:
    """The server of one engine, loading its model in the background (also one Ray Serve replica's)."""
    from mistral_nemo.engine.async_engine import AsyncLLMEngine
    from mistral_nemo.engine.llm_engine import LLMEngine
    from mistral_nemo.entrypoints.model_options import load_for_cli
    from mistral_nemo.entrypoints.server import build_app

    engine_limits = engine_config(args)
    config = server_config(args)

    def build_engine() -> AsyncLLMEngine:
        if parallel is not None:
            loaded, engine = parallel.build(engine_limits, on_rank_lost)
        else:
            loaded = load_for_cli(args)
            engine = LLMEngine(loaded, engine_limits)
        # Request fields left out take the model's sampling defaults (generation_config.json, NeMo's 0.3,
        # the embedded model's greedy), as vLLM does; a request's own field always wins.
        config.sampling_defaults = loaded.generation_defaults
        # Adapters are read now: a bad adapter file stops the server with its name.
        for lora in getattr(args, "lora_requests", ()):
            if lora.lora_name == loaded.name and not args.served_model_name:
                raise ValueError(f"--lora {lora.lora_name}=...: that is already the base model's name")
            engine.add_lora(lora)
        async_engine = AsyncLLMEngine(engine)
        if on_engine is not None:
            on_engine(async_engine)
        return async_engine

    return build_app(build_engine, config, on_load_error=on_load_error)


def run(args: argparse.Namespace) -> int:
    import uvicorn  # imported here: the other commands do not need the server's dependencies

    from mistral_nemo.entrypoints.server.shutdown import GracefulServer
    from mistral_nemo.model.tensor_parallel import TensorParallelError

    check_args(args)
    engine_config(args)  # bad limits fail here, before a replica or the server starts
    server_config(args)
    if args.replicas is not None:
        from mistral_nemo.entrypoints.replicas import run_replicas

        return run_replicas(args)
    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failure: list[BaseException] = []
    parallel = TensorParallelLaunch.from_args(args)
    if parallel is not None and parallel.is_worker:  # torchrun's ranks 1..N-1 serve steps, not HTTP
        parallel.run_worker()
        return 0
    async_engine: list[AsyncLLMEngine] = []
    lost: list[str] = []

    def on_rank_lost(reason: str) -> None:
        """A rank died: requests get 503 (engine dead) at once, and the server stops shortly after."""
        logging.getLogger("mistral_nemo.server").error("%s; stopping the server", reason)
        lost.append(reason)
        if async_engine:
            async_engine[0].dead = TensorParallelError(reason)
        threading.Timer(LOST_RANK_GRACE, lambda: setattr(server, "should_exit", True)).start()

    def on_load_error(exc: BaseException) -> None:
        failure.append(exc)
        server.should_exit = True

    app = server_app(args, on_load_error, parallel, on_rank_lost, async_engine.append)
    uvicorn_config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, lifespan="on"
    )
    server = GracefulServer(uvicorn_config)
    where = f"http://{args.host}:{args.port}"
    print(
        f"mistral-nemo serve: listening on {where} (loading the model; /health says when ready)",
        file=sys.stderr,
    )
    try:
        server.run()
    finally:
        if parallel is not None:
            parallel.close()
    if failure:
        raise ValueError(f"the model failed to load: {failure[0]}")
    if lost:
        raise TensorParallelError(f"the server stopped: {lost[0]}")
    return 0
