pytest_plugins = ["model_fixtures", "squad_fixtures"]

import pytest


@pytest.fixture
def scripted_openai():
    """A running scripted OpenAI-compatible server (tests/openai_scripted.py): `.base_url`
    ends in /v1, `.script(...)` queues responses, `.requests` lists what it received."""
    from openai_scripted import ScriptedOpenAI

    server = ScriptedOpenAI()
    with server.running():
        yield server
