"""Bad input to the commands gets one clear line naming the problem, never a traceback (issue 11)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mistral_nemo.entrypoints.cli import build_parser, main
from mistral_nemo.entrypoints.serve_cmd import model_from_names
from tests.conftest import console_script
from tests.gguf_fixture import smollm2_gguf_path
from tests.nemo_checkpoints import random_reference_model, write_hf_folder, write_mistral_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    model = random_reference_model(seed=7)
    root = tmp_path_factory.mktemp("broken")
    return {
        "mistral": write_mistral_folder(model, root / "mistral"),
        "hf": write_hf_folder(model, root / "hf"),
    }


def one_error_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def corrupt_copy(folder: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    copy = shutil.copytree(folder, tmp_path / folder.name)
    (copy / name).write_bytes(content)
    return copy


@pytest.mark.parametrize("command", [["chat", "--prompt", "x"], ["generate", "--prompt", "x"], ["bench"]])
def test_corrupt_safetensors_header_names_the_file(folders, tmp_path, capsys, command) -> None:
    header_too_large = struct.pack("<Q", 1 << 40) + b"{}"
    broken = corrupt_copy(folders["mistral"], tmp_path, "consolidated.safetensors", header_too_large)
    err = one_error_line([command[0], str(broken), *command[1:]], capsys)
    assert f"{broken / 'consolidated.safetensors'} is not a valid safetensors file" in err


@pytest.mark.parametrize(("kind", "name"), [("mistral", "params.json"), ("hf", "config.json")])
def test_broken_config_json_names_the_file(folders, tmp_path, capsys, kind: str, name: str) -> None:
    broken = corrupt_copy(folders[kind], tmp_path, name, b'{"dim": 320, "n_layers": }')
    err = one_error_line(["generate", str(broken), "--prompt", "x"], capsys)
    assert f"{broken / name} is not valid JSON: Expecting value (line 1, column 26)" in err


def test_cuda_on_a_cpu_only_torch_is_one_line(folders, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    err = one_error_line(["chat", str(folders["mistral"]), "--device", "cuda", "--prompt", "x"], capsys)
    assert "device 'cuda' is not available: this PyTorch is built without CUDA; use --device cpu" in err


def test_a_hub_id_says_how_to_download_it(capsys) -> None:
    err = one_error_line(["chat", "mistralai/Mistral-Nemo-Instruct-2407", "--prompt", "x"], capsys)
    assert "model not found: mistralai/Mistral-Nemo-Instruct-2407" in err
    assert "`mistral-nemo download mistralai/Mistral-Nemo-Instruct-2407`" in err
    err = one_error_line(["chat", "./no/such/folder", "--prompt", "x"], capsys)
    assert err.endswith("model not found: no/such/folder")  # a path, not a hub id: no hint


def test_serve_takes_the_model_after_served_model_name(folders, capsys) -> None:
    args = build_parser().parse_args(["serve", "--served-model-name", "nemo", "other", str(folders["hf"])])
    model_from_names(args)
    assert (args.model, args.served_model_name) == (str(folders["hf"]), ["nemo", "other"])
    args = build_parser().parse_args(["serve", str(folders["hf"]), "--served-model-name", "a/b"])
    model_from_names(args)  # a name that is not a path stays a name
    assert (args.model, args.served_model_name) == (str(folders["hf"]), ["a/b"])
    err = one_error_line(["serve", "--served-model-name", str(folders["hf"]), "--port", "1"], capsys)
    assert "names an existing path: give MODEL first" in err


def test_tokenize_chat_on_a_gguf_tokenizer_and_by_default(tmp_path: Path, capsys, monkeypatch) -> None:
    gguf = smollm2_gguf_path()
    conversation = tmp_path / "chat.json"
    conversation.write_text(json.dumps([{"role": "user", "content": "What is the capital of France?"}]))
    assert main(["tokenize", "--tokenizer", str(gguf), "--chat", str(conversation), "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)["ids"]
    from mistral_nemo.tokenizer import load_tokenizer

    messages = json.loads(conversation.read_text())
    assert ids == load_tokenizer(gguf).encode_chat(messages)  # the GGUF's own chat template
    monkeypatch.setenv("MISTRAL_NEMO_HOME", str(gguf.parent.parent))  # where the embedded model is cached
    assert main(["tokenize", "--json", "Hello"]) == 0  # no --tokenizer: the embedded model's
    assert json.loads(capsys.readouterr().out)["ids"] == load_tokenizer(gguf).encode("Hello")


def test_threads_flag_sets_the_thread_count(folders) -> None:
    result = subprocess.run(
        [console_script("mistral-nemo"), "bench", str(folders["mistral"]), "--threads", "1",
         "--prompt-len", "8", "--gen-len", "3"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["threads"] == 1


def test_starting_the_cli_imports_no_torch() -> None:
    code = (
        "import sys; from mistral_nemo.entrypoints.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'numba', 'fastapi', 'uvicorn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
