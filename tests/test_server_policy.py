"""Per-request squad policy through the official openai client: shadow, off, named policies
(body field or header), criteria and threshold overrides, and their errors."""

import httpx
import openai
import pytest
from squad_fixtures import RUDE
from test_server import FIXED, LOCAL, Base, Q, scripted_squad
from test_server_reliability import aligners_server, client

from serve.server_config import ServerConfig

pytestmark = pytest.mark.timeout(120)
POLICIES = {"pii-only": {"criteria": ["no-pii"]}, "watch": {"mode": "shadow"}}


@pytest.fixture(scope="module")
def server(squad_artifacts):
    config = ServerConfig(squad="<injected>", policies=POLICIES)
    with aligners_server(config, scripted_squad(squad_artifacts, Base(RUDE[0]))) as (root, _):
        yield root


def ask(root, aligners=None, headers=None):
    raw = client(root).chat.completions.with_raw_response.create(
        model=LOCAL, messages=Q, extra_body={"aligners": aligners} if aligners else None, extra_headers=headers)
    return raw.parse(), raw.headers


def test_shadow_returns_the_original_with_what_the_squad_would_write(server):
    before = httpx.get(f"{server}/metrics").text
    out, headers = ask(server, {"mode": "shadow"})
    info = out.model_extra["aligners"]
    assert out.choices[0].message.content == RUDE[0]  # a client ignoring extra fields sees the original
    assert info["mode"] == "shadow" and info["would_change"] is True and info["changed"] is False
    assert info["choices"][0]["corrected"] == FIXED and info["choices"][0]["flagged"] == ["polite"]
    assert headers["x-aligners-mode"] == "shadow" and headers["x-aligners-would-change"] == "true"
    after = httpx.get(f"{server}/metrics").text

    def value(text, series):
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(series)))

    shadow = 'aligners_shadow_would_correct_total{criterion="polite"}'
    assert value(after, shadow) == value(before, shadow) + 1
    assert value(after, "aligners_answers_changed_total") == value(before, "aligners_answers_changed_total")


def test_enforce_is_the_default_and_off_skips_the_squad(server):
    out, headers = ask(server)
    assert out.choices[0].message.content == FIXED and headers["x-aligners-mode"] == "enforce"
    out, headers = ask(server, {"mode": "off"})
    info = out.model_extra["aligners"]
    assert out.choices[0].message.content == RUDE[0] and info["mode"] == "off" and "scores" not in info["choices"][0]
    assert headers["x-aligners-squad"] == "on" and headers["x-aligners-changed"] == "false"


def test_named_policies_by_body_or_header_and_request_fields_override_them(server):
    for aligners, headers in (({"policy": "pii-only"}, None), (None, {"x-aligners-policy": "pii-only"})):
        out, _ = ask(server, aligners, headers)
        info = out.model_extra["aligners"]
        assert out.choices[0].message.content == RUDE[0]  # polite does not run under pii-only
        assert list(info["choices"][0]["scores"]["before"]) == ["no-pii"]
    out, _ = ask(server, {"policy": "watch", "mode": "enforce"})  # the request's own field wins
    assert out.choices[0].message.content == FIXED
    out, _ = ask(server, {"thresholds": {"polite": 1e-6}})  # nothing is below this threshold
    assert out.choices[0].message.content == RUDE[0]
    assert out.model_extra["aligners"]["choices"][0]["scores"]["thresholds"]["polite"] == 1e-6


@pytest.mark.parametrize(("aligners", "param", "words"), [
    ({"policy": "nope"}, "aligners.policy", "unknown policy 'nope'; this server's policies: pii-only, watch"),
    ({"criteria": ["rude"]}, "aligners.criteria", "unknown criteria ['rude']"),
    ({"thresholds": {"polite": 1.5}}, None, "less than 1"),
    ({"mode": "loud"}, None, "enforce"),
])
def test_bad_policies_are_named_400s(server, aligners, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        ask(server, aligners)
    assert words in str(err.value) and (param is None or err.value.body["param"] == param)


def test_live_streaming_refuses_a_non_enforce_mode(server):
    with pytest.raises(openai.BadRequestError, match="enforce mode only"):
        client(server).chat.completions.create(model=LOCAL, messages=Q, stream=True,
                                               extra_body={"aligners": {"stream_mode": "live", "mode": "shadow"}})


def test_a_policy_name_is_also_a_model_name(server):
    ids = {m.id: m.model_extra["aligners"] for m in client(server).models.list().data}
    assert ids["pii-only"] == {"role": "policy", "base": LOCAL, "criteria": ["no-pii"]}
    out = client(server).chat.completions.create(model="pii-only", messages=Q)
    assert out.choices[0].message.content == RUDE[0] and out.model == "pii-only"
    assert list(out.model_extra["aligners"]["choices"][0]["scores"]["before"]) == ["no-pii"]
    with pytest.raises(openai.NotFoundError, match="`tiny-random-llama`, `pii-only`, `watch`"):
        client(server).chat.completions.create(model="nope", messages=Q)
