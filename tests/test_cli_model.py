"""The model commands as a user runs them: `mistral-nemo chat/generate`, `mistral-chat`, `mistral-demo`.

They run on a small random NeMo-shaped Mistral folder (the text is noise; the behaviour is not).
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from mistral_nemo.entrypoints.mistral_compat import DEMO_PROMPTS, SEPARATOR
from tests.conftest import console_script
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder


@pytest.fixture(scope="module")
def nemo_folder(tmp_path_factory) -> Path:
    return write_mistral_folder(random_reference_model(seed=3), tmp_path_factory.mktemp("Nemo-small"))


def run(name: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(name), *args], input=stdin, capture_output=True, text=True, timeout=300
    )


def test_mistral_demo(nemo_folder: Path) -> None:
    result = run("mistral-demo", str(nemo_folder), "--max_tokens", "6")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split(SEPARATOR + "\n")
    assert len(blocks) == 4 and blocks[-1] == ""
    for prompt, block in zip(DEMO_PROMPTS, blocks, strict=False):
        assert block.startswith(prompt)


def test_mistral_chat_instruct_conversation(nemo_folder: Path) -> None:
    result = run(
        "mistral-chat", str(nemo_folder), "--instruct", "--max-tokens", "4", "--temperature", "0",
        stdin="Hello\nAnd again\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr  # end of input ends the chat cleanly
    assert result.stdout.count("Prompt: ") == 3
    assert result.stdout.count(SEPARATOR) == 2
    assert "Traceback" not in result.stderr


def test_mistral_chat_refuses_lora_clearly(nemo_folder: Path) -> None:
    result = run("mistral-chat", str(nemo_folder), "--lora_path", "/tmp/adapter")
    assert result.returncode == 2
    assert "LoRA" in result.stderr and "Traceback" not in result.stderr


def test_chat_prompt_is_repeatable_with_seed(nemo_folder: Path) -> None:
    args = (
        "chat",
        str(nemo_folder),
        "--prompt",
        "Hi",
        "--max-tokens",
        "6",
        "--seed",
        "4",
        "--temperature",
        "1",
    )
    first, second = run("mistral-nemo", *args), run("mistral-nemo", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()


def test_interactive_chat_commands(nemo_folder: Path) -> None:
    script = (
        '/help\n"""\nline one\nline two\n"""\n/system Be brief.\nhello \\\nthere\n/reset\n/nonsense\n/exit\n'
    )
    result = run("mistral-nemo", "chat", str(nemo_folder), "--max-tokens", "3", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "/system TEXT" in result.stderr  # /help
    assert "system prompt set" in result.stderr
    assert "conversation cleared" in result.stderr
    assert "unknown command /nonsense" in result.stderr
    assert result.stdout.count(">>> ") >= 6
    assert result.stdout.count("... ") == 4  # three lines inside """ ... """, one after a backslash


def test_generate_echo_and_stop(nemo_folder: Path) -> None:
    greedy = ("--temperature", "0")  # a NeMo-shaped folder samples at 0.3 by default
    free = run("mistral-nemo", "generate", str(nemo_folder), "--prompt", "abc", "--max-tokens", "12", *greedy)
    assert free.returncode == 0, free.stderr
    completion = free.stdout.removesuffix("\n")
    echoed = run(
        "mistral-nemo",
        "generate",
        str(nemo_folder),
        "--prompt",
        "abc",
        "--max-tokens",
        "12",
        "--echo",
        *greedy,
    )
    assert echoed.stdout == "abc" + free.stdout
    stop = completion[4:7]
    if stop.strip():
        stopped = run(
            "mistral-nemo",
            "generate",
            str(nemo_folder),
            "--prompt",
            "abc",
            "--max-tokens",
            "12",
            "--stop",
            stop,
            *greedy,
        )
        assert stopped.stdout.removesuffix("\n") == completion[: completion.find(stop)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chat", "/nonexistent/model", "--prompt", "x"], "model not found"),
        (["generate", "{tmp}", "--prompt", "x"], "is not a model folder"),
        (["chat", "{nemo}", "--prompt", "x", "--temperature", "-1"], "temperature"),
    ],
)
def test_errors_are_one_line(nemo_folder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    filled = [a.format(tmp=tmp_path, nemo=nemo_folder) for a in args]
    result = run("mistral-nemo", *filled)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_session_keeps_both_sides_of_each_turn(nemo_folder: Path) -> None:
    import torch

    from mistral_nemo.engine.llm_engine import LLMEngine
    from mistral_nemo.engine.sampling_params import SamplingParams
    from mistral_nemo.entrypoints.chat_cmd import LocalConversation
    from mistral_nemo.model.loading import load

    engine = LLMEngine(load(nemo_folder, dtype=torch.float32, device="cpu"))
    session = LocalConversation(engine, SamplingParams(max_tokens=4, temperature=0), system="Be brief.")
    sink = io.StringIO()
    first = session.reply("first question", out=sink)
    session.reply("second question", out=sink)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[0]["content"] == "first question"
    assert session.messages[1]["content"] == (first or " ")
    assert session.messages[2]["content"] == "second question"


@pytest.mark.parametrize("mode", ["latency", "throughput"])
def test_bench_prints_one_json_line(nemo_folder: Path, mode: str) -> None:
    import json

    result = run(
        "mistral-nemo", "bench", str(nemo_folder), "--mode", mode, "--prompt-len", "24", "--gen-len", "5",
        "--batch", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    figures = json.loads(line)
    assert figures["batch"] == (1 if mode == "latency" else 3)
    for key in ("ttft_s", "prefill_tok_s", "decode_tok_s", "output_tok_s", "weight_bytes", "peak_rss_bytes"):
        assert figures[key] > 0, key
    # fp32 weights of the small NeMo-shaped model: output, 2 layers, norm, RoPE inv_freq (64), and one
    # row of the untied embedding table (a step reads one row of it).
    layer = 320 * 512 * 2 + 320 * 256 * 2 + 3 * 320 * 640 + 2 * 320
    assert figures["weight_bytes"] == 4 * (4072 * 320 + 2 * layer + 320 + 64 + 320)
    assert ("bandwidth_gb_s" in figures) == (mode == "latency")
