"""Hot reload: POST /admin/reload (admin keys only) and SIGHUP swap the squad without dropping
in-flight requests; a bad recipe is refused and the old squad keeps serving."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml
from test_server_reliability import aligners_server, client

from serve.server_config import ServerConfig

pytestmark = pytest.mark.timeout(300)
LOCAL = "tiny-random-llama"
ADMIN = {"Authorization": "Bearer admin-key"}


def recipe(root, path, criteria):
    path.write_text(yaml.safe_dump({
        "backend": {"type": "transformers", "model": LOCAL},
        "members": [{"criterion": c, "inspector": str(root / "inspectors" / c), "aligner": str(root / "aligners" / c)}
                    for c in criteria],
        "policy": {"aligner_params": {"max_tokens": 8}},
    }))
    return path


def test_reload_swaps_the_squad_refuses_bad_recipes_and_keeps_requests(squad_artifacts, tmp_path):
    both = recipe(squad_artifacts, tmp_path / "both.yaml", ["polite", "no-pii"])
    polite = recipe(squad_artifacts, tmp_path / "polite.yaml", ["polite"])
    broken = recipe(tmp_path, tmp_path / "broken.yaml", ["polite"])  # no artifacts under tmp_path
    config = ServerConfig(squad=str(both), api_keys=["user-key"], admin_keys=["admin-key"])
    with aligners_server(config) as (root, _):
        def reload(body=None, headers=ADMIN):
            return httpx.post(f"{root}/admin/reload", json=body, headers=headers, timeout=120)

        assert reload(headers={}).status_code == 401
        assert reload(headers={"Authorization": "Bearer user-key"}).status_code == 401  # an API key is not admin

        slow: dict = {}

        def long_request():  # in flight while the squad is swapped
            slow["reply"] = client(root, key="user-key").chat.completions.create(
                model=LOCAL, messages=[{"role": "user", "content": "q"}], max_tokens=300)

        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(0.3)
        swapped = reload({"squad": str(polite)})
        worker.join()
        assert swapped.status_code == 200 and swapped.json()["criteria"] == ["polite"]
        assert slow["reply"].choices[0].finish_reason in ("stop", "length")  # not dropped
        health = httpx.get(f"{root}/health").json()
        assert health["criteria"] == ["polite"]

        refused = reload({"squad": str(broken)})
        assert refused.status_code == 400 and "the current squad keeps serving" in refused.text
        assert httpx.get(f"{root}/health").json()["criteria"] == ["polite"]
        out = client(root, key="user-key").chat.completions.create(
            model=LOCAL, messages=[{"role": "user", "content": "q"}], max_tokens=4)
        assert list(out.model_extra["aligners"]["choices"][0]["scores"]["before"]) == ["polite"]

        again = reload()  # no body: the server's own recipe (the last one loaded)
        assert again.status_code == 200 and again.json()["reloaded"] == str(polite)


def test_admin_endpoints_are_off_without_admin_keys(squad_artifacts, tmp_path):
    config = ServerConfig(squad=str(recipe(squad_artifacts, tmp_path / "s.yaml", ["polite"])))
    with aligners_server(config) as (root, _):
        off = httpx.post(f"{root}/admin/reload", headers=ADMIN)
        assert off.status_code == 404 and "admin_keys" in off.text


def test_sighup_reloads_the_recipe_file(squad_artifacts, tmp_path):
    path = recipe(squad_artifacts, tmp_path / "squad.yaml", ["polite", "no-pii"])
    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen([sys.executable, "-m", "aligners.cli", "serve", "--squad", str(path), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = f"http://127.0.0.1:{port}"

    def criteria():
        try:
            return httpx.get(f"{root}/health", timeout=2).json()["criteria"]
        except httpx.HTTPError:
            return None

    try:
        deadline = time.monotonic() + 120
        while criteria() is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.3)
        assert criteria() == ["polite", "no-pii"]
        recipe(squad_artifacts, path, ["no-pii"])  # edit the recipe, then signal
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while criteria() != ["no-pii"] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert criteria() == ["no-pii"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
