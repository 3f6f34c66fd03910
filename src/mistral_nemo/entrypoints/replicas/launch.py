"""Deploy `serve --replicas N` on Ray Serve: a local Ray cluster, or the one at --ray-address.

Ray does the cluster work (placing replicas, restarting dead ones, health checks, the HTTP
proxy); this module only says what to deploy and with which resources.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from mistral_nemo.entrypoints.replicas.deployments import EngineReplica, Ingress

APP_NAME = "mistral-nemo"
# Ray's consistent-hash router (session stickiness): the conversation key is the session id.
ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
LOCAL_OBJECT_STORE_BYTES = 128 << 20  # only small messages cross processes: token chunks, metrics text
HEALTH_CHECK_PERIOD_S = 2.0  # a dead engine is replaced within seconds
# Requests a replica takes beyond its engine's own limit (running + queue): /health, /v1/models ...
CONTROL_REQUESTS = 16


def start_replicas(args: argparse.Namespace) -> str:
    """Join or start Ray, deploy the replicas and the ingress; return the URL once all are ready."""
    from mistral_nemo.entrypoints.serve_cmd import engine_config, server_config

    limits = engine_config(args)
    config = server_config(args)
    if not ray.is_initialized():
        if args.ray_address:
            ray.init(address=args.ray_address, log_to_driver=False)
        else:
            ray.init(
                include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False
            )
    serve.start(http_options={"host": args.host, "port": args.port})
    engines = EngineReplica.options(
        num_replicas=args.replicas,
        ray_actor_options=replica_resources(args),
        max_ongoing_requests=limits.max_num_seqs + limits.max_queue + CONTROL_REQUESTS,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        graceful_shutdown_timeout_s=config.shutdown_timeout,
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTER,
            # Strict affinity under load would queue a conversation behind a busy replica; the engine's
            # own queue answers 503 when it is full, so every live replica is a fallback.
            request_router_kwargs={"num_fallback_replicas": max(args.replicas - 1, 0)},
        ),
    ).bind(args)
    ingress = Ingress.options(
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=args.replicas * (limits.max_num_seqs + limits.max_queue + CONTROL_REQUESTS),
    ).bind(engines, config.max_body_bytes)
    serve.run(ingress, name=APP_NAME, route_prefix="/")
    return f"http://{args.host}:{args.port}"


def replica_resources(args: argparse.Namespace) -> dict[str, float]:
    """One replica's reservation: its CPU threads and one GPU (unless it runs on the CPU) per
    tensor-parallel rank; the ranks it spawns see the GPUs Ray gave it (CUDA_VISIBLE_DEVICES)."""
    ranks = args.tensor_parallel_size or 1
    wants_gpu = args.device != "cpu" and (
        args.device is not None or ray.cluster_resources().get("GPU", 0) > 0
    )
    return {"num_cpus": float((args.threads or 1) * ranks), "num_gpus": float(ranks) if wants_gpu else 0.0}


def stop_replicas() -> None:
    if ray.is_initialized():  # serve.shutdown() would otherwise start a cluster only to stop it
        serve.shutdown()
        ray.shutdown()


def run_replicas(args: argparse.Namespace) -> int:
    """`mistral-nemo serve --replicas N`: deploy, serve until SIGINT/SIGTERM, then tear down."""
    print(f"mistral-nemo serve: deploying {args.replicas} engine replicas on Ray Serve ...", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = start_replicas(args)
        print(f"mistral-nemo serve: {args.replicas} replicas ready at {url}", file=sys.stderr)
        stop.wait()
    finally:
        print("mistral-nemo serve: shutting the replicas down", file=sys.stderr)
        stop_replicas()
    return 0
