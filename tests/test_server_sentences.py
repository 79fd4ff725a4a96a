"""stream_mode "sentences" through the official openai client, which ignores every extra field:
clean sentences flow as they complete, and no text an inspector flags ever reaches the client."""

import time

import openai
import pytest
from squad_fixtures import POLITE, RUDE
from test_server import FIXED, Base, Q, scripted_squad
from test_server_reliability import SSEUpstream, aligners_server, client

from serve.server_config import ServerConfig

pytestmark = pytest.mark.timeout(120)
SENTENCES = {"aligners": {"stream_mode": "sentences"}}
RUDE_WORDS = ("idiot", "stupid", "moron", "Ugh")


def stream(text, squad_artifacts, chat=True):
    """(content pieces as the client got them, the final aligners object, the upstream)."""
    up = SSEUpstream(text, delay=0.01)
    squad = scripted_squad(squad_artifacts, Base("unused"))
    with up.running() as url, aligners_server(ServerConfig(squad="<injected>", upstream=url, upstream_model="m"),
                                              squad) as (root, _):
        if chat:
            raw = client(root).chat.completions.with_raw_response.create(model="m", messages=Q, stream=True,
                                                                         extra_body=SENTENCES)
            chunks = list(raw.parse())
            pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        else:
            raw = client(root).completions.with_raw_response.create(model="m", prompt="q", stream=True,
                                                                    extra_body=SENTENCES)
            chunks = list(raw.parse())
            pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
        assert raw.headers["x-aligners-stream-mode"] == "sentences"
        deadline = time.monotonic() + 5
        while up.finished + up.abandoned == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return pieces, chunks[-1].model_extra.get("aligners") or chunks[-2].model_extra.get("aligners"), up


def test_a_clean_answer_streams_sentence_by_sentence(squad_artifacts):
    text = " ".join(POLITE[:3])
    pieces, info, up = stream(text, squad_artifacts)
    assert "".join(pieces) == text and pieces[0] == POLITE[0] + " " and len(pieces) == 3
    assert info["stream_mode"] == "sentences" and info["changed"] is False and up.finished == 1


def test_a_flagged_sentence_is_never_sent_and_the_base_is_stopped(squad_artifacts):
    text = " ".join([POLITE[0], RUDE[1], POLITE[1], POLITE[2], POLITE[3]])
    pieces, info, up = stream(text, squad_artifacts)
    received = "".join(pieces)
    assert pieces[0] == POLITE[0] + " " and not any(w in received for w in RUDE_WORDS)
    assert received.rstrip() == FIXED  # the rewrite of "POLITE[0] RUDE[1]" extends nothing new here
    assert info["changed"] is True and up.abandoned == 1  # the upstream stream was closed early


def test_a_flag_on_the_first_sentence_streams_only_the_rewrite(squad_artifacts):
    pieces, info, _ = stream(" ".join([RUDE[1], POLITE[1]]), squad_artifacts, chat=False)
    assert "".join(pieces) == FIXED and info["choices"][0]["applied"] == ["polite"]


def test_sentences_mode_streams_one_choice(squad_artifacts):
    squad = scripted_squad(squad_artifacts, Base(POLITE[0]))
    with (aligners_server(ServerConfig(squad="<injected>"), squad) as (root, _),
          pytest.raises(openai.BadRequestError, match="stream_mode `sentences` streams a single choice")):
        client(root).chat.completions.create(model="tiny-random-llama", messages=Q, stream=True, n=2,
                                             extra_body=SENTENCES)
