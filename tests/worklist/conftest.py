from __future__ import annotations

import pytest

from tests.factories import ResultFactory, SeriesFactory, StudyFactory, UserFactory


@pytest.fixture
def rad2(db):
    return UserFactory(username="rad2", role="radiologist")


@pytest.fixture
def make_study(db):
    """A study with current results and its synced worklist item: ``make_study(ich=0.93, lvo=None, **study)``."""
    from worklist.services import worklist_item_sync

    def make(*, ich: float | None = None, lvo: float | None = None, threshold: float = 0.5, png=None, **study_kw):
        study = StudyFactory(**study_kw)
        for finding, score in (("ich", ich), ("lvo", lvo)):
            if score is None:
                continue
            series = SeriesFactory(study=study, series_instance_uid=f"{study.study_instance_uid}.{finding}")
            ResultFactory(
                series=series, finding=finding, score=score, threshold=threshold, key_image_png=png, model_name=finding
            )
        return worklist_item_sync(study=study)

    return make


class WebhookReceiver:
    """A loopback pager/chat webhook: records each JSON body and answers ``statuses`` in turn, then 200."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self
        self.bodies: list[dict] = []
        self.statuses: list[int] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                import json

                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def webhook():
    receiver = WebhookReceiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
