"""nginx from deploy/nginx/ in front of two daphne web nodes of the app, on loopback: requests reach both nodes, and a
worklist WebSocket through nginx on one node receives the event of a change made through the other node's API.

Two configs: run.conf, what ``make run`` renders for TRIAGE_WEB_PROCESSES > 1 (plain HTTP), and the production site
triage.conf with TLS (a throwaway self-signed certificate). The nodes share the test database and a Redis.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from websockets.sync.client import connect

from tests.conftest import ROOT, _database_url
from tests.factories import StudyFactory, UserFactory
from tools.procs import free_port, port_open, wait_until
from tools.run import (
    daphne_command,
    nginx_binary,
    nginx_locations_write,
    nginx_render,
    nginx_run_config_write,
    upstream_servers,
)

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]

NGINX_DIR = ROOT / "deploy" / "nginx"
# daphne starts slowly beside a training run on two cores.
START_TIMEOUT = 90


@dataclass
class Node:
    port: int
    access_log: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, since: int = 0) -> str:
        """The access log from offset ``since`` (the nodes serve a whole module; each test reads its own part)."""
        return self.access_log.read_text()[since:] if self.access_log.exists() else ""

    def mark(self) -> int:
        return len(self.log())


@dataclass
class Proxy:
    url: str
    ws_url: str
    nodes: list[Node]
    tls: ssl.SSLContext | None = None
    cafile: str = ""
    http_url: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _node(tmp_path: Path, name: str, env: dict[str, str]) -> Node:
    port = free_port()
    access_log = tmp_path / f"{name}.access.log"
    command = daphne_command(port, behind_proxy=True)
    command[-1:-1] = ["--access-log", str(access_log)]
    with (tmp_path / f"{name}.log").open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Node(port=port, access_log=access_log, process=process)


def _nginx(config: Path) -> subprocess.Popen:
    command = [nginx_binary(), "-e", "stderr", "-p", str(config.parent), "-c", str(config), "-g", "daemon off;"]
    checked = subprocess.run([*command[:-2], "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stderr
    with (config.parent / "nginx.out").open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def _start_nodes(directory: Path, env: dict[str, str]) -> Iterator[list[Node]]:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the web nodes share the test database only on PostgreSQL")
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": _database_url(), "TRIAGE_DEBUG": "1", **env}
    started = [_node(directory, name, env) for name in ("node-a", "node-b")]
    try:
        for node in started:
            wait_until(lambda n=node: port_open(n.port), timeout=START_TIMEOUT, what="daphne web node")
        yield started
    finally:
        for node in started:
            _stop(node.process)


# Two nodes per module and kind, not per test: the test database's name stays the same, only its rows are flushed.
@pytest.fixture(scope="module")
def plain_nodes(django_db_setup, redis_server, tmp_path_factory) -> Iterator[list[Node]]:
    yield from _start_nodes(tmp_path_factory.mktemp("plain-nodes"), {"REDIS_URL": redis_server.url})


@pytest.fixture(scope="module")
def tls_nodes(django_db_setup, redis_server, tmp_path_factory) -> Iterator[list[Node]]:
    """Nodes told they sit behind a TLS proxy, and that insist on TLS."""
    env = {"REDIS_URL": redis_server.url, "TRIAGE_BEHIND_TLS_PROXY": "1", "TRIAGE_SSL_REDIRECT": "1"}
    yield from _start_nodes(tmp_path_factory.mktemp("tls-nodes"), env)


@pytest.fixture
def static_root(tmp_path) -> Path:
    root = tmp_path / "static"
    (root / "triage").mkdir(parents=True)
    (root / "triage" / "probe.txt").write_text("served by nginx\n")
    return root


@pytest.fixture
def run_proxy(plain_nodes, tmp_path, static_root) -> Iterator[Proxy]:
    """What ``make run`` starts with TRIAGE_WEB_PROCESSES=2: run.conf on a loopback port."""
    web = plain_nodes
    port = free_port()
    config = nginx_run_config_write(
        tmp_path / "nginx", http_port=port, web_ports=[n.port for n in web], static_root=static_root
    )
    process = _nginx(config)
    try:
        wait_until(lambda: port_open(port), timeout=30, what="nginx")
        yield Proxy(url=f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{port}", nodes=web)
    finally:
        _stop(process)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _site_config(directory: Path, *, http_port: int, https_port: int, web_ports: list[int], static_root: Path) -> Path:
    """deploy/nginx/triage.conf with its placeholders filled, inside a minimal nginx.conf with every path here."""
    cert, key = _self_signed(directory)
    locations = nginx_locations_write(directory, static_root=static_root)
    site = nginx_render(
        (NGINX_DIR / "triage.conf").read_text(),
        {
            "SERVER_NAME": "127.0.0.1",
            "HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "HTTPS_LISTEN": f"127.0.0.1:{https_port}",
            "TLS_CERTIFICATE": str(cert),
            "TLS_CERTIFICATE_KEY": str(key),
            "UPSTREAM_SERVERS": upstream_servers([f"127.0.0.1:{p}" for p in web_ports]),
            "LOCATIONS": str(locations),
        },
    )
    (directory / "triage.conf").write_text(site)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in kinds)
    config = directory / "nginx.conf"
    config.write_text(
        f"user root;\npid {directory / 'nginx.pid'};\nerror_log stderr warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    include /etc/nginx/mime.types;\n{temp}\n    include {directory / 'triage.conf'};\n}}\n"
    )
    return config


@pytest.fixture
def tls_proxy(tls_nodes, tmp_path, static_root) -> Iterator[Proxy]:
    """The production site: TLS on one port, the plain-HTTP redirect on another."""
    web = tls_nodes
    http_port, https_port = free_port(), free_port()
    directory = tmp_path / "nginx-site"
    directory.mkdir()
    config = _site_config(
        directory, http_port=http_port, https_port=https_port, web_ports=[n.port for n in web], static_root=static_root
    )
    process = _nginx(config)
    context = ssl.create_default_context(cafile=str(directory / "cert.pem"))
    try:
        wait_until(lambda: port_open(https_port), timeout=30, what="nginx")
        yield Proxy(
            url=f"https://127.0.0.1:{https_port}",
            ws_url=f"wss://127.0.0.1:{https_port}",
            nodes=web,
            tls=context,
            cafile=str(directory / "cert.pem"),
            http_url=f"http://127.0.0.1:{http_port}",
        )
    finally:
        _stop(process)


def _session_cookie(user) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def _worklist_change_across_nodes(proxy: Proxy) -> dict:
    """Open the worklist socket through nginx, claim a study through the other node's own port, return the event."""
    from knox.models import AuthToken

    from worklist.services import worklist_item_sync

    user = UserFactory(username="rad_proxy", role="radiologist")
    item = worklist_item_sync(study=StudyFactory(study_description="CT HEAD WO CONTRAST"))
    uid = item.study.study_instance_uid
    _, token = AuthToken.objects.create(user)
    headers = {"Cookie": f"sessionid={_session_cookie(user)}", "Origin": proxy.url}
    marks = [node.mark() for node in proxy.nodes]
    with connect(f"{proxy.ws_url}/ws/worklist/", additional_headers=headers, ssl=proxy.tls, open_timeout=30) as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["type"] == "hello"
        connected = [
            lambda n=node, m=mark: "WSCONNECT /ws/worklist/" in n.log(m)
            for node, mark in zip(proxy.nodes, marks, strict=True)
        ]
        wait_until(lambda: any(check() for check in connected), timeout=30, what="the socket in a node's access log")
        here = next(i for i, check in enumerate(connected) if check())
        other = proxy.nodes[1 - here]
        # Straight to the node, with the header nginx adds over TLS (the TLS nodes insist on a secure request).
        direct = {"Authorization": f"Token {token}", "X-Forwarded-Proto": "https" if proxy.tls else "http"}
        response = requests.post(f"{other.url}/api/v1/studies/{uid}/claim/", headers=direct, timeout=30)
        assert response.status_code == 200, response.text
        while True:
            event = json.loads(ws.recv(timeout=30))
            if event["type"] == "item" and event["item"]["study_instance_uid"] == uid:
                return event


def test_requests_through_nginx_reach_both_web_nodes(run_proxy):
    marks = [node.mark() for node in run_proxy.nodes]
    answers = [requests.get(f"{run_proxy.url}/healthz", timeout=30).status_code for _ in range(12)]

    assert answers == [200] * 12
    assert all("GET /healthz" in node.log(mark) for node, mark in zip(run_proxy.nodes, marks, strict=True))


def test_client_cannot_forge_its_address_through_nginx(run_proxy):
    for _ in range(4):
        requests.get(f"{run_proxy.url}/healthz", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=30)

    logs = "".join(node.log() for node in run_proxy.nodes)
    assert "203.0.113.9" not in logs
    assert "127.0.0.1" in logs


def test_nginx_serves_static_files_and_refuses_oversized_bodies(run_proxy):
    static = requests.get(f"{run_proxy.url}/static/triage/probe.txt", timeout=30)
    oversized = requests.post(f"{run_proxy.url}/api/v1/studies/notify/", data=b"x" * (9 * 1024 * 1024), timeout=60)

    assert static.text == "served by nginx\n"
    assert "probe.txt" not in "".join(node.log() for node in run_proxy.nodes)
    assert oversized.status_code == 413


def test_websocket_through_nginx_receives_an_event_made_on_the_other_node(run_proxy):
    event = _worklist_change_across_nodes(run_proxy)

    assert event["item"]["claimed_by"] == "rad_proxy"
    assert "claim" in event["changes"]


def test_tls_site_marks_requests_secure_and_redirects_plain_http(tls_proxy):
    through_tls = requests.get(f"{tls_proxy.url}/accounts/login/", verify=tls_proxy.cafile, timeout=30)
    plain = requests.get(f"{tls_proxy.http_url}/accounts/login/", allow_redirects=False, timeout=30)
    direct = requests.get(f"{tls_proxy.nodes[0].url}/accounts/login/", allow_redirects=False, timeout=30)
    health = requests.get(f"{tls_proxy.http_url}/healthz", allow_redirects=False, timeout=30)

    assert through_tls.status_code == 200
    assert plain.status_code == 301
    assert plain.headers["Location"].startswith("https://127.0.0.1")
    assert direct.status_code == 301  # the node itself insists on TLS; only nginx's X-Forwarded-Proto satisfies it
    assert health.status_code == 200


def test_websocket_through_tls_site_receives_an_event_made_on_the_other_node(tls_proxy):
    event = _worklist_change_across_nodes(tls_proxy)

    assert event["item"]["claimed_by"] == "rad_proxy"
