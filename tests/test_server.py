"""The OpenAI-compatible server with a real squad (toy MiniLM inspectors + tiny-Llama aligners from
`squad_artifacts`) on a real uvicorn server, called with the official `openai` client: chat and
completions corrected, `aligners` details and `x-aligners-*` headers, buffered and live streaming,
an upstream as the base, /v1/aligners/{correct,inspect}, /v1/models, metrics.

Policy assertions use `ScriptedBackend` for generation (as tests/test_squad.py does): the base and
each aligner write what the test decides; inspection, routing and re-inspection are real. One test
runs the real tiny transformers model end to end.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest
from openai_scripted import Reply
from squad_fixtures import POLITE, RUDE, ScriptedBackend
from test_server_reliability import SSEUpstream, aligners_server, client, wait_for

from aligners.backends.base import GenerationRequest
from serve.config import SquadConfig
from serve.pipeline import Squad
from serve.server_config import ServerConfig

pytestmark = pytest.mark.timeout(120)

FIXED = "The store opens at nine, I hope that helps."
LOCAL = "tiny-random-llama"  # the squad backend's model: the served name of a `base: shared` squad
# the toy inspectors were fitted with the prompt "q" only: other prompts move their scores
Q = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]


def squad_config(root, **policy) -> SquadConfig:
    return SquadConfig.model_validate({
        "backend": {"type": "transformers", "model": LOCAL, "max_batch_size": 4},
        "members": [{"criterion": c, "inspector": str(root / "inspectors" / c), "aligner": str(root / "aligners" / c)}
                    for c in ("polite", "no-pii")],
        "policy": policy,
    })


class Base:
    """The scripted base model's script: answers in turn (the last one repeats); records requests."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.requests: list[GenerationRequest] = []

    def __call__(self, request: GenerationRequest) -> str:
        self.requests.append(request)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def scripted_squad(root, base: Base) -> Squad:
    writers = {None: base, "polite": lambda r: FIXED, "no-pii": lambda r: "I can't share personal details."}
    return Squad.from_config(squad_config(root), backend=ScriptedBackend(writers))


@pytest.fixture(scope="module")
def local(squad_artifacts):
    """A server whose squad answers with a scripted local base (`base: shared`)."""
    base = Base(RUDE[0])
    with aligners_server(ServerConfig(squad="<injected>"), scripted_squad(squad_artifacts, base)) as (root, _):
        yield root, base


def test_chat_answer_is_corrected_with_details_and_headers(local):
    root, base = local
    base.answers = [RUDE[0]]
    raw = client(root).chat.completions.with_raw_response.create(model=LOCAL, messages=Q, max_tokens=40,
                                                                 temperature=0.3, top_p=0.9, stop=["\n\n"], seed=7,
                                                                 extra_body={"repetition_penalty": 1.1})
    out = raw.parse()
    assert out.object == "chat.completion" and out.choices[0].message.content == FIXED
    assert out.choices[0].finish_reason == "stop" and out.model == LOCAL
    assert raw.headers["x-aligners-changed"] == "true" and raw.headers["x-aligners-applied"] == "polite"
    assert raw.headers["x-aligners-flagged"] == "polite" and float(raw.headers["x-aligners-time-ms"]) > 0
    info = out.aligners  # the extra top-level field
    assert info["squad"] and info["changed"] and info["applied"] == ["polite"]
    (choice,) = info["choices"]
    assert choice["scores"]["before"]["polite"] < 0.5 <= choice["scores"]["after"]["polite"]
    assert choice["steps"][0]["criterion"] == "polite" and "original" not in choice
    assert set(info["timings_ms"]) == {"generate", "inspect", "align", "total"}
    # the whole conversation and the sampling knobs reached the base model
    sent = base.requests[-1]
    assert [m.role for m in sent.messages] == ["system", "user"]
    p = sent.params
    assert (p.max_tokens, p.temperature, p.top_p, p.stop, p.seed, p.repetition_penalty) == (40, 0.3, 0.9, ["\n\n"], 7, 1.1)
    # the original only on request
    out = client(root).chat.completions.create(model=LOCAL, messages=Q, extra_body={"aligners": {"return_original": True}})
    assert out.aligners["choices"][0]["original"] == RUDE[0]


def test_clean_answer_passes_unchanged_and_n_choices_are_each_corrected(local):
    root, base = local
    base.answers = [POLITE[3]]
    raw = client(root).chat.completions.with_raw_response.create(model=LOCAL, messages=Q)
    assert raw.parse().choices[0].message.content == POLITE[3]
    assert raw.headers["x-aligners-changed"] == "false" and raw.headers["x-aligners-applied"] == ""
    base.answers = [RUDE[1], POLITE[2], RUDE[2]]
    out = client(root).chat.completions.create(model=LOCAL, messages=Q, n=3)
    assert [c.message.content for c in out.choices] == [FIXED, POLITE[2], FIXED]
    assert [c["changed"] for c in out.aligners["choices"]] == [True, False, True]


def test_completions_correct_each_prompt_and_choice(local):
    root, base = local
    base.answers = [RUDE[3], POLITE[0], RUDE[4], POLITE[1]]
    out = client(root).completions.create(model=LOCAL, prompt=["q", "q"], n=2, max_tokens=20)
    assert out.object == "text_completion"
    assert [c.text for c in out.choices] == [FIXED, POLITE[0], FIXED, POLITE[1]]
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [r.prompt for r in base.requests[-4:]] == ["q"] * 4 and base.requests[-1].params.max_tokens == 20


def test_buffered_streaming_with_the_async_client(local):
    root, base = local
    base.answers = [RUDE[0]]

    async def run():
        c = openai.AsyncOpenAI(base_url=f"{root}/v1", api_key="x", max_retries=0)
        stream = await c.chat.completions.create(model=LOCAL, messages=Q, stream=True,
                                                 stream_options={"include_usage": True})
        return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FIXED  # only the corrected text is ever streamed
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    (last_choice,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert last_choice.choices[0].finish_reason == "stop"
    assert last_choice.aligners["stream_mode"] == "buffered" and last_choice.aligners["changed"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_raw_sse_framing_and_headers(local):
    root, base = local
    base.answers = [RUDE[0]]
    with httpx.stream("POST", f"{root}/v1/chat/completions", json={"model": LOCAL, "messages": Q, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-aligners-changed"] == "true"  # known before the first byte in buffered mode
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_live_streaming_from_a_local_base_then_the_correction_event(local):
    root, base = local
    base.answers = [RUDE[0]]
    chunks = list(client(root).chat.completions.create(
        model=LOCAL, messages=Q, stream=True, extra_body={"aligners": {"stream_mode": "live"}}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == RUDE[0]  # the base text, as it came
    final = chunks[-1]
    assert final.choices[0].finish_reason == "stop"
    (choice,) = final.aligners["choices"]
    assert final.aligners["stream_mode"] == "live"
    assert choice["replaces_streamed"] is True and choice["corrected"] == FIXED


def test_correct_and_inspect_endpoints(local):
    root, _ = local
    with httpx.Client(base_url=root) as http:
        r = http.post("/v1/aligners/correct", json={"prompt": "q", "answer": [RUDE[0], POLITE[0]], "id": ["a", "b"]})
        assert r.status_code == 200 and r.headers["x-aligners-changed"] == "true"
        data = r.json()["data"]
        assert [d["id"] for d in data] == ["a", "b"] and [d["changed"] for d in data] == [True, False]
        assert data[0]["corrected"] == FIXED and data[0]["original"] == RUDE[0]
        assert data[0]["trace"]["steps"][0]["criterion"] == "polite"
        r = http.post("/v1/aligners/inspect", json={"prompt": ["q", "q"], "answer": [RUDE[0], POLITE[0]]})
        data = r.json()["data"]
        assert data[0]["flagged"] == ["polite"] and data[1]["flagged"] == []
        assert set(data[0]["scores"]) == {"polite", "no-pii"} and data[0]["thresholds"]["polite"] == 0.5
        bad = http.post("/v1/aligners/inspect", json={"prompt": ["q"], "answer": ["a", "b"]})
        assert bad.status_code == 400 and "1 prompts but 2 answers" in bad.json()["error"]["message"]
        bad = http.post("/v1/aligners/correct", json={"prompt": "q"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "answer"


def test_models_list_the_base_and_each_aligner(local):
    root, _ = local
    models = client(root).models.list().data
    assert [m.id for m in models] == [LOCAL, "aligners/polite", "aligners/no-pii"]
    assert models[1].aligners == {"role": "aligner", "criterion": "polite", "threshold": 0.5}
    with pytest.raises(openai.BadRequestError, match="is an aligner"):
        client(root).chat.completions.create(model="aligners/polite", messages=Q)


def test_metrics_after_squad_requests(squad_artifacts):
    base = Base(RUDE[5], POLITE[5])
    with aligners_server(ServerConfig(squad="<injected>"), scripted_squad(squad_artifacts, base)) as (root, _):
        c = client(root)
        c.chat.completions.create(model=LOCAL, messages=Q)
        c.chat.completions.create(model=LOCAL, messages=Q)
        text = httpx.get(f"{root}/metrics").text
    assert 'aligners_flagged_total{criterion="polite"} 1.0' in text
    assert 'aligners_corrected_total{criterion="polite"} 1.0' in text
    assert 'aligners_flagged_total{criterion="no-pii"} 0.0' in text
    assert "aligners_answers_total 2.0" in text and "aligners_answers_changed_total 1.0" in text
    for stage in ("generate", "inspect", "align", "total"):
        assert f'aligners_stage_seconds_count{{stage="{stage}"}} 2.0' in text, stage
    assert 'aligners_requests_total{endpoint="chat",status="200"} 2.0' in text


def test_squad_runs_off_the_event_loop_one_call_at_a_time(squad_artifacts):
    lock, active, peak = threading.Lock(), [0], [0]

    def slow_base(request):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.8)
        with lock:
            active[0] -= 1
        return POLITE[0]

    squad = Squad.from_config(squad_config(squad_artifacts), backend=ScriptedBackend({None: slow_base}))

    async def run(root):
        async with httpx.AsyncClient(base_url=root, timeout=30) as http:
            chats = [asyncio.ensure_future(http.post("/v1/chat/completions", json={"model": LOCAL, "messages": Q}))
                     for _ in range(3)]
            await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            health = await http.get("/health")
            return time.perf_counter() - t0, health, await asyncio.gather(*chats)

    with aligners_server(ServerConfig(squad="<injected>"), squad) as (root, _):
        health_s, health, replies = asyncio.run(run(root))
    assert health.status_code == 200 and health_s < 0.4  # the loop answered while torch-like work ran
    assert [r.status_code for r in replies] == [200] * 3
    assert peak[0] == 1  # never two generations on one model at once


# --- an upstream OpenAI-compatible server as the base ------------------------------------------------------


def test_rude_upstream_answer_comes_back_corrected(squad_artifacts, scripted_openai):
    scripted_openai.script(Reply(RUDE[6]), Reply(RUDE[7]), Reply(POLITE[7]))
    squad = scripted_squad(squad_artifacts, Base("the local base must not be used"))
    cfg = ServerConfig(squad="<injected>", upstream=scripted_openai.base_url, upstream_model="scripted-base",
                       upstream_key="passthrough")
    with aligners_server(cfg, squad) as (root, _):
        c = client(root, "sk-user")
        raw = c.chat.completions.with_raw_response.create(model="scripted-base", messages=Q, max_tokens=30, seed=1,
                                                          extra_body={"aligners": {"return_original": True}})
        out = raw.parse()
        assert out.choices[0].message.content == FIXED
        assert out.aligners["choices"][0]["original"] == RUDE[6]
        assert raw.headers["x-aligners-changed"] == "true" and raw.headers["x-aligners-applied"] == "polite"
        sent = scripted_openai.requests[-1]
        assert sent.path == "/v1/chat/completions" and sent.headers["authorization"] == "Bearer sk-user"
        assert sent.body["messages"] == Q and (sent.body["max_tokens"], sent.body["seed"]) == (30, 1)
        # completions through the upstream, and a clean answer left alone
        out = c.completions.create(model="scripted-base", prompt=["q", "q"])
        assert sorted(ch.text for ch in out.choices) == sorted([FIXED, POLITE[7]])  # calls run concurrently
        assert [r.path for r in scripted_openai.requests[-2:]] == ["/v1/completions"] * 2


def test_live_stream_of_a_rude_upstream_then_its_correction(squad_artifacts):
    up = SSEUpstream(RUDE[8], delay=0.01)
    squad = scripted_squad(squad_artifacts, Base("unused"))
    with up.running() as url, aligners_server(ServerConfig(squad="<injected>", upstream=url, upstream_model="m"), squad) as (root, _):
        chunks = list(client(root).chat.completions.create(
            model="m", messages=Q, stream=True, extra_body={"aligners": {"stream_mode": "live"}}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == RUDE[8]
        choice = chunks[-1].aligners["choices"][0]
        assert choice["replaces_streamed"] and choice["corrected"] == FIXED
        # buffered mode (default) streams only the corrected text
        chunks = list(client(root).chat.completions.create(model="m", messages=Q, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FIXED


# --- the real tiny transformers model -------------------------------------------------------------------


def test_real_tiny_model_end_to_end(squad_artifacts):
    cfg = squad_config(squad_artifacts, base_params={"max_tokens": 4}, aligner_params={"max_tokens": 4})
    squad = Squad.from_config(cfg)  # tiny random Llama, both aligners as real LoRA adapters
    with aligners_server(ServerConfig(squad="<injected>"), squad) as (root, _):
        c = client(root)
        out = c.chat.completions.create(model=LOCAL, messages=Q, max_tokens=4)
        assert isinstance(out.choices[0].message.content, str)
        assert {v for v in out.aligners["choices"][0]["scores"]["before"]} == {"polite", "no-pii"}
        out = c.completions.create(model=LOCAL, prompt="Once upon a time", max_tokens=3, n=2)
        assert len(out.choices) == 2 and out.usage.completion_tokens > 0
        text = "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat.completions.create(model=LOCAL, messages=Q, max_tokens=4, stream=True) if ch.choices)
        assert isinstance(text, str)


def test_a_timed_out_local_generation_is_stopped_and_frees_the_model(squad_artifacts):
    cfg = squad_config(squad_artifacts, aligner_params={"max_tokens": 4})
    squad = Squad.from_config(cfg)  # the real tiny transformers model as base and aligners
    server = aligners_server(ServerConfig(squad="<injected>", request_timeout_s=0.5), squad)
    with server as (root, app), httpx.Client(base_url=root, timeout=60) as http:
        r = http.post("/v1/chat/completions", json={"model": LOCAL, "messages": Q, "max_tokens": 900})
        assert r.status_code == 504 and r.json()["error"]["code"] == "generation_timeout", r.text
        # 900 tokens take seconds on any CPU; the cancelled run lets go of the model at once
        wait_for(lambda: not app.state.serving._tlock.locked(), timeout=1.0, what="the model lock")
        t0 = time.monotonic()
        ok = http.post("/v1/chat/completions", json={"model": LOCAL, "messages": Q, "max_tokens": 2})
        assert ok.status_code == 200 and time.monotonic() - t0 < 0.5 + 1.0, ok.text
        long = [{"role": "user", "content": "word " * 2000}]
        r = http.post("/v1/chat/completions", json={"model": LOCAL, "messages": long, "max_tokens": 2})
        err = r.json()["error"]
        assert (r.status_code, err["code"], err["param"]) == (400, "prompt_too_long", "messages"), r.text
        assert "context holds 1024 tokens" in err["message"]
        r = http.post("/v1/completions", json={"model": LOCAL, "prompt": "word " * 2000, "max_tokens": 2})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "prompt")
