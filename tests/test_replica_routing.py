"""The pieces of `serve --replicas` that need no Ray: the conversation key and the merged /metrics."""

from __future__ import annotations

import json
import re
import sys

from prometheus_client import generate_latest

from mistral_nemo.engine.llm_engine import EngineStats
from mistral_nemo.entrypoints.cli import main
from mistral_nemo.entrypoints.replicas.affinity import PROMPT_PREFIX_CHARS, conversation_key
from mistral_nemo.entrypoints.replicas.metrics_merge import merge_metrics
from mistral_nemo.entrypoints.server.metrics import ServerMetrics

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Capital of France?"}


def key(**request: object) -> str | None:
    return conversation_key(json.dumps(request).encode())


def test_the_turns_of_a_conversation_share_a_key() -> None:
    first = key(model="m", messages=[SYSTEM, USER], temperature=0)
    later = key(
        model="m", messages=[SYSTEM, USER, {"role": "assistant", "content": "Paris."}, USER], stream=True
    )
    assert first is not None and first == later
    assert key(messages=[SYSTEM, {"role": "user", "content": "Capital of Spain?"}]) != first
    assert key(messages=[{"role": "system", "content": "Be long."}, USER]) != first
    assert key(messages=[SYSTEM]) == key(messages=[SYSTEM, {"role": "assistant", "content": "x"}])


def test_completion_prompts_share_a_key_by_their_opening() -> None:
    opening = "Q: " + "a" * PROMPT_PREFIX_CHARS
    assert key(prompt=opening + " first") == key(prompt=opening + " second") == key(prompt=[opening + "!"])
    assert key(prompt="one short prompt") != key(prompt="another short prompt")
    assert key(prompt=list(range(200))) == key(prompt=[*range(200), 7])  # token ids


def test_requests_without_a_conversation_have_no_key() -> None:
    for body in (b"", b"not json", b"[1, 2]", b'{"model": "m"}', b'{"messages": []}', b'{"prompt": ""}'):
        assert conversation_key(body) is None, body


def test_merged_metrics_are_each_replicas_own_with_a_replica_label() -> None:
    stats = EngineStats(
        running=1, waiting=0, kv_cache_usage=0.5, prefix_cache_queries=40, prefix_cache_hits=32,
        preemptions=0, prompt_tokens=40, generation_tokens=8,
    )  # fmt: skip
    one, two = ServerMetrics(lambda: stats), ServerMetrics(lambda: None)
    one.ttft.observe(0.25)
    texts = {"r1": generate_latest(one.registry).decode(), "r2": generate_latest(two.registry).decode()}
    merged = merge_metrics(texts).decode()
    for replica, text in texts.items():
        own = [line for line in merged.splitlines() if line.startswith("#") or f'replica="{replica}"' in line]
        unlabelled = [re.sub(rf',?replica="{replica}"', "", line).replace("{}", "") for line in own]
        samples = [line for line in unlabelled if not line.startswith("#")]
        assert samples == [line for line in text.splitlines() if not line.startswith("#")]
    assert 'mistral_nemo:prefix_cache_hits_total{replica="r1"} 32.0' in merged
    assert merged.count("# TYPE mistral_nemo:time_to_first_token_seconds histogram") == 1


def test_replicas_without_ray_say_how_to_install_it(monkeypatch, capsys) -> None:
    for name in ("ray", "ray.serve"):  # as if the ray extra were not installed
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["serve", "--replicas", "2"]) == 2
    error = capsys.readouterr().err
    assert "--replicas needs Ray Serve" in error and "pip install 'mistral-nemo[ray]'" in error


def test_ray_address_needs_replicas(capsys) -> None:
    assert main(["serve", "--ray-address", "auto"]) == 2
    assert "--ray-address needs --replicas N" in capsys.readouterr().err


def test_replicas_under_torchrun_are_refused(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # each replica starts its own ranks; torchrun's would be idle
    assert main(["serve", "--replicas", "2", "--tensor-parallel-size", "2"]) == 2
    assert "--replicas starts its own ranks in each replica" in capsys.readouterr().err


def test_a_tensor_parallel_replica_reserves_each_ranks_cpus_and_gpu() -> None:
    from mistral_nemo.entrypoints.cli import build_parser
    from mistral_nemo.entrypoints.replicas.launch import replica_resources

    def reserved(*flags: str) -> dict[str, float]:
        return replica_resources(build_parser().parse_args(["serve", "--replicas", "2", *flags]))

    assert reserved("--device", "cpu", "--threads", "2") == {"num_cpus": 2.0, "num_gpus": 0.0}
    both = ("--tensor-parallel-size", "4", "--threads", "2")
    assert reserved("--device", "cpu", *both) == {"num_cpus": 8.0, "num_gpus": 0.0}
    assert reserved("--device", "cuda", *both) == {"num_cpus": 8.0, "num_gpus": 4.0}
