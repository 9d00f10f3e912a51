"""The server against hostile clients and files: header and read limits, compressed bodies,
API keys, /metrics, bundles whose values were edited (hashes recomputed), and a worker that
cannot start. One real `nmt serve` on 127.0.0.1, started and stopped here by PID."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helpers import (
    STARTUP_SECONDS,
    free_port,
    stop_server,
)
from helpers import Server as RunningServer
from prometheus_client.parser import text_string_to_metric_families

from nmt.bundle import CONFIG, DECODING, MANIFEST_NAME, load_bundle
from nmt.errors import UserError
from serve.auth import API_KEYS_ENV, api_keys
from serve.decoding_limits import clamp_decoding
from serve.http_limits import LIMITS
from serve.schemas import MAX_BEAM_SIZE

KEY = "k" * 20 + "-first-client"
ENV_KEY = "e" * 20 + "-second-client"
READ_TIMEOUT = 2.0
SLOW_CLIENTS = 50
BODY = {"text": "Ein Mann fährt Fahrrad."}


def serve_command(bundle: Path, port: int, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "nmt.cli", "serve", "--translate", str(bundle)]
    return [*command, "--port", str(port), "--log-level", "warning", *extra]


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundle):
    directory = tmp_path_factory.mktemp("serve")
    port = free_port()
    log = directory / "server.log"
    command = serve_command(bundle, port, "--api-key", KEY, "--read-timeout", str(READ_TIMEOUT))
    environment = {**os.environ, API_KEYS_ENV: ENV_KEY}
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=directory, env=environment
        )
    running = RunningServer(f"http://127.0.0.1:{port}", process, log, {"translate": bundle})
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while requests_ok(running) is False:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield running
    finally:
        stop_server(running)


def requests_ok(server: RunningServer) -> bool:
    try:
        return requests.get(server.url + "/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def translate(server: RunningServer, key: str | None = KEY, **kwargs) -> requests.Response:
    headers = {"X-API-Key": key} if key else {}
    headers.update(kwargs.pop("headers", {}))
    return requests.post(server.url + "/translate", headers=headers, timeout=60, **kwargs)


def raw_exchange(port: int, data: bytes, wait: float = 30.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


def port_of(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


# ----------------------------------------------------------------------------- API keys


def test_keys_are_required_except_for_health_and_the_page(server) -> None:
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    assert requests.get(server.url + "/", timeout=10).status_code == 200  # asks for the key
    assert requests.get(server.url + "/static/app.js", timeout=10).status_code == 200
    assert requests.get(server.url + "/static/../models", timeout=10).status_code == 401
    assert translate(server, key=None, json=BODY).status_code == 401
    assert translate(server, key="wrong" * 5, json=BODY).status_code == 401
    for path in ("/models", "/stats", "/metrics", "/docs"):
        assert requests.get(server.url + path, timeout=10).status_code == 401, path
    assert translate(server, json=BODY).status_code == 200
    assert translate(server, key=ENV_KEY, json=BODY).status_code == 200  # from the environment
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert translate(server, key=None, json=BODY, headers=bearer).status_code == 200


def test_short_or_odd_keys_are_refused() -> None:
    with pytest.raises(UserError, match="at least 16"):
        api_keys(["short"], environ={})
    assert api_keys([KEY], environ={API_KEYS_ENV: f"{ENV_KEY}, {KEY}"}) == (KEY, ENV_KEY)
    assert api_keys(None, environ={}) == ()


# ----------------------------------------------------------------------------- HTTP limits


def test_an_oversized_header_is_cut_off_and_good_requests_answered(server) -> None:
    filler = "x" * (LIMITS.max_header_bytes + 1)
    answer = raw_exchange(
        port_of(server),
        f"POST /translate HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nX-Filler: {filler}\r\n"
        "Content-Length: 2\r\n\r\n{}".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    many = {f"X-Extra-{i}": "1" for i in range(LIMITS.max_headers + 1)}
    assert translate(server, json=BODY, headers=many).status_code == 431
    # a large body under the size limit is not taken for a large header
    texts = {"text": ["Ein Mann fährt Fahrrad."] * 64}
    assert translate(server, json=texts).status_code == 200


def test_slow_clients_are_cut_off_while_good_requests_are_answered(server) -> None:
    port = port_of(server)
    slow = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(SLOW_CLIENTS)]
    try:
        for index, connection in enumerate(slow):  # half send a partial header, half nothing
            if index % 2:
                connection.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert translate(server, json=BODY).status_code == 200  # meanwhile served
        answers = []
        for connection in slow:
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
            answers.append(data)
        elapsed = time.monotonic() - started
    finally:
        for connection in slow:
            connection.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
    assert elapsed < READ_TIMEOUT + 10
    # a body that stops half-way is cut off too
    answer = raw_exchange(
        port,
        f"POST /translate HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]


def test_a_compressed_body_is_refused_with_415(server) -> None:
    body = gzip.compress(json.dumps(BODY).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = translate(server, data=body, headers=headers)
    assert response.status_code == 415 and "identity" in response.json()["detail"]
    headers["Content-Encoding"] = "identity"
    assert translate(server, data=json.dumps(BODY), headers=headers).status_code == 200


# ----------------------------------------------------------------------------- metrics


def scrape(server: RunningServer) -> dict[tuple[str, tuple], float]:
    response = requests.get(server.url + "/metrics", headers={"X-API-Key": KEY}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_parse_and_move_with_traffic(server) -> None:
    before = scrape(server)
    for _ in range(3):
        assert translate(server, json=BODY).status_code == 200
    assert translate(server, key=None, json=BODY).status_code == 401
    after = scrape(server)

    def value(samples, name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    ok = {"endpoint": "/translate", "method": "POST", "status": "200"}
    denied = {**ok, "status": "401"}
    assert value(after, "hypernmt_http_requests_total", **ok) == (
        value(before, "hypernmt_http_requests_total", **ok) + 3
    )
    assert value(after, "hypernmt_http_requests_total", **denied) >= 1 + value(
        before, "hypernmt_http_requests_total", **denied
    )
    count = "hypernmt_http_request_duration_seconds_count"
    assert (
        value(after, count, endpoint="/translate")
        >= value(before, count, endpoint="/translate") + 4
    )
    steps = "hypernmt_decoder_steps_total"
    assert value(after, steps, endpoint="/translate") > value(before, steps, endpoint="/translate")
    assert value(after, "hypernmt_queue_length", endpoint="/translate") == 0
    for idle in ("hypernmt_live_rows", "hypernmt_live_cost", "hypernmt_queued_sentences"):
        assert (idle, (("endpoint", "/translate"),)) in after  # the translator's load, idle now
        assert value(after, idle, endpoint="/translate") == 0
    memory = [v for (name, _), v in after.items() if name == "hypernmt_worker_memory_bytes"]
    assert memory and min(memory) > 50e6  # a worker holds torch and the model
    unknown = requests.get(server.url + "/no/such/path/1", headers={"X-API-Key": KEY}, timeout=10)
    assert unknown.status_code == 404
    labels = {dict(key).get("endpoint") for (name, key) in scrape(server)}
    assert "/no/such/path/1" not in labels and "other" in labels


# ----------------------------------------------------------------------------- bundle values


def edited_bundle(source: Path, destination: Path, name: str, edit) -> Path:
    """A copy of ``source`` with ``name`` (JSON) edited and the manifest's hashes recomputed,
    as whoever edits a bundle can do."""
    import hashlib
    import shutil

    shutil.copytree(source, destination)
    path = destination / name
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    manifest = json.loads((destination / MANIFEST_NAME).read_text())
    manifest["files"][name] = {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
    }
    (destination / MANIFEST_NAME).write_text(json.dumps(manifest))
    return destination


@pytest.mark.parametrize(
    "name, field, value, message",
    [
        (CONFIG, "hidden_size", 1e6, "hidden_size=1000000.0 is invalid"),
        (CONFIG, "hidden_size", -5, "hidden_size=-5 is invalid"),
        (CONFIG, "vocab_size", 10**12, "vocab_size=1000000000000 is invalid"),
        (CONFIG, "dropout", 1.5, "dropout=1.5 is invalid"),
        (CONFIG, "tie_embeddings", "yes", "tie_embeddings='yes' is invalid"),
        (CONFIG, "width", 3, "width"),
        (DECODING, "beam_size", 1000, "field 'beam_size' is 1000"),
        (DECODING, "beam_size", "5", "field 'beam_size' is '5'"),
        (DECODING, "max_length", -1, "max_length=-1 is invalid"),
        (DECODING, "alpha", float("nan"), "not valid JSON|field 'alpha'"),
    ],
)
def test_each_bad_bundle_value_gets_its_message(tmp_path, bundle, name, field, value, message):
    def edit(data):
        data[field] = value

    edited = edited_bundle(bundle, tmp_path / "edited", name, edit)
    with pytest.raises(UserError, match=message) as caught:
        load_bundle(edited)
    assert str(edited / name) in str(caught.value) and "\n" not in str(caught.value)


def test_bundle_defaults_are_clamped_to_the_request_limits() -> None:
    clamped = clamp_decoding({"beam_size": 64, "nbest": 20, "alpha": 0.6}, where="bundle")
    assert clamped == {"beam_size": MAX_BEAM_SIZE, "nbest": MAX_BEAM_SIZE, "alpha": 0.6}


def test_a_worker_that_cannot_start_is_one_line(tmp_path, bundle) -> None:
    def edit(data):
        data["recurrent"]["hyper_size"] = -1

    edited = edited_bundle(bundle, tmp_path / "edited", CONFIG, edit)
    run = subprocess.run(
        serve_command(edited, free_port()),
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS,
        cwd=tmp_path,
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert "Traceback" not in run.stderr, run.stderr
    assert lines[-1].startswith("nmt serve: error: the server could not start: /translate worker: ")
    assert "hyper_size=-1 is invalid" in lines[-1] and str(edited / CONFIG) in lines[-1]
