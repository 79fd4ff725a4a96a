"""OpenAIHTTPBackend against a real (scripted) HTTP server: routing, retries, errors."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import pytest
from openai_scripted import Delay, Garbage, Reply, Status

from aligners.backends.base import BackendError, GenerationRequest, SamplingParams
from aligners.backends.openai_http import OpenAIHTTPBackend
from aligners.config import OpenAIHTTPBackendConfig, VLLMBackendConfig

pytestmark = pytest.mark.timeout(60)


def backend(base_url: str, **overrides) -> OpenAIHTTPBackend:
    cfg = {"base_url": base_url, "model": "base", "backoff_s": 0.01, "timeout_s": 10.0}
    return OpenAIHTTPBackend(OpenAIHTTPBackendConfig(**{**cfg, **overrides}))


def completion_calls(server) -> list:
    return [r for r in server.requests if r.path.endswith("completions")]


def test_chat_request_body_and_parsed_reply(scripted_openai, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    scripted_openai.script(Reply(text="hello", prompt_tokens=7, completion_tokens=2))
    req = GenerationRequest.chat(
        "hi", system="be brief", params=SamplingParams(max_tokens=5, temperature=0.3, seed=11)
    )
    [gen] = backend(scripted_openai.base_url).generate([req])
    assert (gen.text, gen.prompt_tokens, gen.completion_tokens) == ("hello", 7, 2)
    assert gen.finish_reason == "stop"
    [call] = scripted_openai.requests
    assert call.path == "/v1/chat/completions"
    assert call.body == {
        "model": "base",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 5,
        "temperature": 0.3,
        "top_p": 1.0,
        "seed": 11,
    }
    assert "authorization" not in call.headers


def test_repetition_penalty_is_sent_only_when_set(scripted_openai):
    scripted_openai.script(Reply(text="ok"))
    req = GenerationRequest.chat("hi", params=SamplingParams(max_tokens=5, repetition_penalty=1.2))
    backend(scripted_openai.base_url).generate([req])
    assert scripted_openai.requests[-1].body["repetition_penalty"] == 1.2


def test_prompt_request_uses_completions_with_stop_and_length(scripted_openai):
    scripted_openai.script(Reply(text="abc", finish_reason="length"))
    req = GenerationRequest(prompt="once upon", params=SamplingParams(stop=["\n"]))
    [gen] = backend(scripted_openai.base_url).generate([req])
    assert (gen.text, gen.finish_reason) == ("abc", "length")
    [call] = scripted_openai.requests
    assert call.path == "/v1/completions"
    assert call.body["prompt"] == "once upon"
    assert call.body["stop"] == ["\n"]
    assert "seed" not in call.body and "messages" not in call.body


def test_completions_endpoint_flattens_chat(scripted_openai):
    be = backend(scripted_openai.base_url, endpoint="completions")
    [gen] = be.generate([GenerationRequest.chat("2+2?", system="math")])
    [call] = scripted_openai.requests
    assert call.path == "/v1/completions"
    assert call.body["prompt"] == "System: math\n\nUser: 2+2?\n\nAssistant:"
    assert gen.text.startswith("echo:System: math")


def test_missing_usage_counts_as_zero(scripted_openai):
    scripted_openai.script(Garbage('{"choices": [{"message": {"content": "x"}}]}'))
    [gen] = backend(scripted_openai.base_url).generate([GenerationRequest.chat("q")])
    assert (gen.text, gen.prompt_tokens, gen.completion_tokens, gen.finish_reason) == (
        "x",
        0,
        0,
        "stop",
    )


def test_batch_keeps_order_and_respects_concurrency(scripted_openai):
    # The server answers in whatever order the delays end; the backend must not reorder.
    delays = [0.05 * ((7 * i) % 5) + 0.05 for i in range(10)]
    scripted_openai.script(*(Delay(d) for d in delays))
    reqs = [GenerationRequest.chat(f"q{i}") for i in range(10)]
    t0 = time.monotonic()
    gens = backend(scripted_openai.base_url, concurrency=3).generate(reqs)
    assert [g.text for g in gens] == [f"echo:q{i}" for i in range(10)]
    assert scripted_openai.max_in_flight == 3
    assert time.monotonic() - t0 < sum(delays)  # they did overlap


def test_agenerate_is_natively_async(scripted_openai):
    be = backend(scripted_openai.base_url, concurrency=4)
    scripted_openai.script(*(Delay(0.2) for _ in range(4)))

    async def main():
        t0 = time.monotonic()
        gens = await be.agenerate([GenerationRequest.chat(f"a{i}") for i in range(4)])
        return gens, time.monotonic() - t0

    gens, elapsed = asyncio.run(main())
    assert [g.text for g in gens] == [f"echo:a{i}" for i in range(4)]
    assert elapsed < 0.7 and scripted_openai.max_in_flight == 4


def test_generate_inside_running_loop_does_not_deadlock(scripted_openai):
    be = backend(scripted_openai.base_url)

    async def main():
        return be.generate([GenerationRequest.chat("inside")])

    [gen] = asyncio.run(main())
    assert gen.text == "echo:inside"


def test_empty_batch_makes_no_request(scripted_openai):
    assert backend(scripted_openai.base_url).generate([]) == []
    assert scripted_openai.requests == []


def test_adapter_routes_by_served_model_name(scripted_openai):
    be = backend(scripted_openai.base_url, adapters={"polite": "polite-lora"})
    be.load_adapter("terse", "terse-lora")
    assert be.adapters() == ["polite", "terse"]
    reqs = [
        GenerationRequest.chat("a"),
        GenerationRequest.chat("b", adapter="polite"),
        GenerationRequest(prompt="c", adapter="terse"),
    ]
    be.generate(reqs)
    by_input = {
        (r.body.get("prompt") or r.body["messages"][-1]["content"]): r.body["model"]
        for r in scripted_openai.requests
    }
    assert by_input == {"a": "base", "b": "polite-lora", "c": "terse-lora"}


def test_unknown_adapter_fails_before_any_http(scripted_openai):
    be = backend(scripted_openai.base_url, adapters={"polite": "polite-lora"})
    reqs = [GenerationRequest.chat("a"), GenerationRequest.chat("b", adapter="rude")]
    with pytest.raises(BackendError, match=r"unknown adapter 'rude'.*polite"):
        be.generate(reqs)
    assert scripted_openai.requests == []


def test_429_is_retried_honouring_retry_after(scripted_openai):
    scripted_openai.script(Status(429, "slow down", retry_after=1))
    t0 = time.monotonic()
    [gen] = backend(scripted_openai.base_url, max_retries=2).generate([GenerationRequest.chat("x")])
    elapsed = time.monotonic() - t0
    assert gen.text == "echo:x"
    assert len(completion_calls(scripted_openai)) == 2
    assert 0.9 <= elapsed < 5  # waited the server's 1 s, not the 0.01 s backoff


def test_500_is_retried_then_succeeds(scripted_openai):
    scripted_openai.script(Status(500), Status(503), Reply(text="ok"))
    [gen] = backend(scripted_openai.base_url, max_retries=3).generate([GenerationRequest.chat("x")])
    assert gen.text == "ok"
    assert len(completion_calls(scripted_openai)) == 3


def test_persistent_500_gives_up_after_max_retries(scripted_openai):
    scripted_openai.script(*(Status(500, "engine dead") for _ in range(10)))
    be = backend(scripted_openai.base_url, max_retries=2)
    with pytest.raises(BackendError) as err:
        be.generate([GenerationRequest.chat("x")])
    msg = str(err.value)
    assert "3 attempt(s)" in msg and "HTTP 500" in msg and "engine dead" in msg
    assert "/chat/completions" in msg
    assert len(completion_calls(scripted_openai)) == 3


def test_400_fails_at_once_with_server_message(scripted_openai):
    scripted_openai.script(Status(400, "max_tokens is too large"), Reply(text="never"))
    with pytest.raises(BackendError, match=r"HTTP 400: max_tokens is too large"):
        backend(scripted_openai.base_url, max_retries=3).generate([GenerationRequest.chat("x")])
    assert len(completion_calls(scripted_openai)) == 1


def test_failure_in_batch_cancels_the_rest(scripted_openai):
    scripted_openai.script(Status(404, "no such model"), Delay(30))  # whichever arrives first
    be = backend(scripted_openai.base_url, concurrency=2)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="no such model"):
        be.generate([GenerationRequest.chat("a"), GenerationRequest.chat("b")])
    assert time.monotonic() - t0 < 5


def test_timeout_is_reported_within_bounded_time(scripted_openai):
    scripted_openai.script(Delay(30), Delay(30))
    be = backend(scripted_openai.base_url, timeout_s=0.3, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="timeout") as err:
        be.generate([GenerationRequest.chat("x")])
    assert time.monotonic() - t0 < 3
    assert "2 attempt(s)" in str(err.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<html>bad gateway</html>", "not JSON"),
        ('{"id": "x", "object": "chat.completion"}', "no `choices`"),
        ('{"choices": []}', "no `choices`"),
        ('{"choices": [{"index": 0, "message": {"role": "assistant"}}]}', "message.content"),
    ],
)
def test_malformed_response_is_a_clear_error(scripted_openai, body, expected):
    scripted_openai.script(Garbage(body))
    with pytest.raises(BackendError, match=expected):
        backend(scripted_openai.base_url).generate([GenerationRequest.chat("x")])
    assert len(completion_calls(scripted_openai)) == 1  # not retried


def test_completion_without_text_is_a_clear_error(scripted_openai):
    scripted_openai.script(Garbage('{"choices": [{"index": 0}]}'))
    with pytest.raises(BackendError, match=r"choices\[\]\.text"):
        backend(scripted_openai.base_url).generate([GenerationRequest(prompt="p")])


def test_api_key_is_sent_as_bearer(scripted_openai, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend(scripted_openai.base_url, api_key="sk-test").generate([GenerationRequest.chat("x")])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    backend(scripted_openai.base_url).generate([GenerationRequest.chat("y")])
    monkeypatch.delenv("OPENAI_API_KEY")
    backend(scripted_openai.base_url).generate([GenerationRequest.chat("z")])
    auth = [r.headers.get("authorization") for r in scripted_openai.requests]
    assert auth == ["Bearer sk-test", "Bearer sk-env", None]


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as sock:  # bind then close: a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    be = backend(f"http://127.0.0.1:{port}/v1", max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"3 attempt\(s\).*ConnectError") as err:
        be.generate([GenerationRequest.chat("x")])
    assert f"127.0.0.1:{port}/v1/chat/completions" in str(err.value)
    assert time.monotonic() - t0 < 5


def test_models_endpoint_lists_served_models(scripted_openai):
    import httpx

    data = httpx.get(f"{scripted_openai.base_url}/models").json()
    assert [m["id"] for m in data["data"]] == ["scripted-base"]


def test_vllm_backend_without_vllm_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    from aligners.backends.vllm_engine import VLLMBackend

    with pytest.raises(BackendError, match=r"vLLM is not installed.*openai_http"):
        VLLMBackend(VLLMBackendConfig(model="some/model"))
