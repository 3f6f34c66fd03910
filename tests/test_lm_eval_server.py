"""The tokenizer endpoints as lm-eval's remote tokenizer reads them, checked against mistral_common.

lm-eval (`tokenizer_backend=remote`) takes BOS / EOS ids as `/tokenize(bos_token)[0]` and
`/tokenize(eos_token)[0]`, renders `chat_template` from /tokenizer_info with its own jinja
environment, and with `--apply_chat_template` sends message lists as `prompt` to /tokenize.
"""

from __future__ import annotations

import random

import httpx
import pytest
from lm_eval.utils import RemoteTokenizer
from lm_eval.utils import env as lm_eval_jinja
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from mistral_nemo.entrypoints.server.tokenizer_routes import TEKKEN_CHAT_TEMPLATE, ControlTextSplitter
from mistral_nemo.tokenizer import TekkenTokenizer
from tests.server_fixture import RunningServer, nemo_model, nemo_server, smol_server  # noqa: F401

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2 + 2?"}],
    [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour.\n"},
    ],
    [
        {"role": "system", "content": "Be kind."},
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "assistant", "content": " !"},
        {"role": "user", "content": "Ça va ?"},
    ],
]


def _reference_ids(reference: MistralTokenizer, messages: list[dict]) -> list[int]:
    return reference.encode_chat_completion(ChatCompletionRequest(messages=messages, model="nemo")).tokens


@pytest.fixture(scope="module")
def server_reference() -> MistralTokenizer:
    """mistral_common on the served model's own tekken.json (NeMo's, cut to the small model's vocab)."""
    return MistralTokenizer.from_file(str(nemo_model().source / "tekken.json"))


def test_control_texts_encode_to_control_ids_like_mistral_common(tekken: TekkenTokenizer, reference) -> None:
    """Text mixing BPE text with the literal text of control tokens: mistral_common's ids piece by piece."""
    ref = reference.instruct_tokenizer.tokenizer
    splitter = ControlTextSplitter(tekken)
    rng = random.Random(0)
    words = ["Hello", " world", "<", "s>", "[INST", "]", " é", "\n", "</", "SPECIAL_", "42>", "ok"]
    controls = [ref.id_to_piece(i) for i in range(ref.num_special_tokens)]
    checked = 0
    while checked < 200:
        text, expected = "", []
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.4:
                control = rng.choice([0, 1, 2, 3, 4, 9, 11, 17, 500, 999])
                piece = ref.id_to_piece(control)  # mistral_common's own control-token text
                text += piece
                expected.append(("control", control))
            else:
                piece = "".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
                text += piece
                expected.append(("text", piece))
        runs = [""]  # adjacent text pieces are one run of BPE text
        for kind, value in expected:
            if kind == "text":
                runs[-1] += value
            else:
                runs += [value, ""]
        if any(isinstance(r, str) and any(c in r for c in controls) for r in runs):
            continue  # text pieces that happen to spell a control token: not the case under test
        ids = [t for r in runs for t in (ref.encode(r, bos=False, eos=False) if isinstance(r, str) else [r])]
        assert splitter.encode(text) == ids, text
        checked += 1
    assert splitter.encode("<s>") == [1] and splitter.encode("</s>") == [2]
    assert splitter.encode("<s") == ref.encode("<s", bos=False, eos=False)  # no partial matches


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_renders_mistral_common_tokens(tekken: TekkenTokenizer, reference, messages) -> None:
    """/tokenizer_info's template, rendered by lm-eval's jinja environment, then /tokenize's mapping."""
    template = lm_eval_jinja.from_string(TEKKEN_CHAT_TEMPLATE)
    text = template.render(messages=messages, add_generation_prompt=True)
    assert ControlTextSplitter(tekken).encode(text) == _reference_ids(reference, messages)


def test_remote_tokenizer_reads_control_ids(nemo_server: RunningServer, server_reference) -> None:  # noqa: F811
    reference = server_reference
    remote = RemoteTokenizer(nemo_server.base_url + "/v1/completions", auth_token=nemo_server.api_key)
    assert (remote.bos_token, remote.eos_token, remote.pad_token) == ("<s>", "</s>", "<pad>")
    assert (remote.bos_token_id, remote.eos_token_id) == (1, 2)  # was 1060 / 1885 (text BPE of "<s>")
    ids = remote.encode("The sky is blue")
    assert ids == reference.instruct_tokenizer.tokenizer.encode("The sky is blue", bos=False, eos=False)
    assert remote.decode([1, *ids, 2]) == "The sky is blue"  # control tokens left out
    for messages in CONVERSATIONS:
        rendered = remote.apply_chat_template(messages)
        assert remote.encode(rendered) == _reference_ids(reference, messages)


def test_tokenize_message_lists(
    nemo_server: RunningServer,  # noqa: F811
    smol_server: RunningServer,  # noqa: F811
    server_reference: MistralTokenizer,
) -> None:
    """`prompt` as a list of messages (lm-eval's --apply_chat_template) = `messages` = chat's encoding."""
    reference = server_reference
    with nemo_server.client() as http:
        for messages in CONVERSATIONS:
            as_prompt = http.post("/tokenize", json={"prompt": messages, "add_special_tokens": False})
            as_messages = http.post("/tokenize", json={"messages": messages})
            assert as_prompt.status_code == 200, as_prompt.text
            expected = _reference_ids(reference, messages)
            assert as_prompt.json()["tokens"] == as_messages.json()["tokens"] == expected
        with_bos = http.post("/tokenize", json={"prompt": "Hi", "add_special_tokens": True}).json()["tokens"]
        literal_bos = http.post("/tokenize", json={"prompt": "<s>Hi"}).json()["tokens"]
        assert with_bos[0] == 1 and literal_bos == [1, *with_bos]  # add_special_tokens defaults to true
    for server in (nemo_server, smol_server):
        with server.client() as http:
            for body in (
                {"prompt": [{"role": "robot", "content": "hi"}]},
                {"messages": [{"role": "robot", "content": "hi"}]},
            ):
                reply = http.post("/tokenize", json=body)
                assert reply.status_code == 400 and "role" in reply.json()["error"]["message"], reply.text
            developer = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
            system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
            assert (
                http.post("/tokenize", json={"messages": developer}).json()["tokens"]
                == http.post("/tokenize", json={"messages": system}).json()["tokens"]
            )  # chat's rule: developer is system
            reply = http.post("/tokenize", json={"prompt": "x", "add_generation_prompt": True})
            assert reply.status_code == 400 and "add_generation_prompt" in reply.json()["error"]["message"]
            reply = http.post("/tokenize", json={"prompt": "x", "messages": system})
            assert reply.status_code == 400


def test_tokenizer_info_fields(nemo_server: RunningServer, smol_server: RunningServer) -> None:  # noqa: F811
    nemo = httpx.get(nemo_server.base_url + "/tokenizer_info", headers=nemo_server.headers).json()
    assert nemo["chat_template"] == TEKKEN_CHAT_TEMPLATE and nemo["pad_token_id"] == 11
    smol = httpx.get(smol_server.base_url + "/tokenizer_info", headers=smol_server.headers).json()
    engine_tokenizer = smol_server.engine.tokenizer
    assert smol["chat_template"] == engine_tokenizer.chat_template.source  # the GGUF's own template
    assert smol["eos_token"] == engine_tokenizer.id_to_piece(engine_tokenizer.eos_id)
    body = {"tokens": [1], "x": 1}
    reply = httpx.post(smol_server.base_url + "/detokenize", json=body, headers=smol_server.headers)
    assert reply.status_code == 400 and "x" in reply.json()["error"]["message"]
