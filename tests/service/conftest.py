"""A real `qrtrain serve` on localhost, in its own process, with tiny-model jobs.

The tiny model is built into the test cache first, so jobs never race to build it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

QRTRAIN = str(Path(sys.executable).parent / "qrtrain")
TINY = ["model=tiny", "training.eval_steps=0", "training.logging_steps=1"]


def request_body(*settings: str) -> dict:
    """A typed request body from `section.key=value` pairs, as the dashboard builds it:
    "training.max_steps=6" -> {"training": {"max_steps": 6}}; values are JSON where they parse."""
    body: dict = {}
    for pair in settings:
        key, _, raw = pair.partition("=")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *sections, last = key.split(".")
        node = body
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One service process: its URL, root, data folder and an httpx client."""

    def __init__(self, root: Path, data: Path, workers: int = 1, host: str = "127.0.0.1", env: dict | None = None,
                 extra: list[str] | None = None):
        self.root, self.data, self.workers, self.host, self.extra = root, data, workers, host, extra or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
        self.process = None
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def start(self):
        self.log = open(self.root.parent / f"serve-{self.port}.log", "ab")
        self.process = subprocess.Popen([QRTRAIN, "serve", "--host", self.host, "--port", str(self.port), "--root",
                                         str(self.root), "--workers", str(self.workers), "--data-root", str(self.data),
                                         *self.extra],
                                        env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                httpx.get(self.url + "/api/options", timeout=2, headers=self.client.headers)
                return self
            except httpx.TransportError:
                assert self.process.poll() is None, (self.root.parent / f"serve-{self.port}.log").read_text()
                time.sleep(0.2)
        raise AssertionError("the service did not start")

    def kill(self, sig=signal.SIGKILL):
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def job(self, job_id: int) -> dict:
        return self.client.get(f"/api/jobs/{job_id}").json()

    def submit(self, *settings: str) -> dict:
        response = self.client.post("/api/jobs", json=request_body(*TINY, *settings))
        assert response.status_code == 201, response.text
        return response.json()

    def wait(self, job_id: int, until, timeout: float = 180) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} never reached the state; last: {job}")

    def events(self, job_id: int) -> list[dict]:
        """The job's SSE stream, read to its end (the `end` event, which is not returned)."""
        events, name = [], None
        with self.client.stream("GET", f"/api/jobs/{job_id}/events", timeout=300) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name != "end":
                    events.append(json.loads(line[6:]))
        assert name == "end"
        return events

    def stop_jobs(self):
        db = self.root / ".service" / "service.db"
        if not db.exists():
            return
        import sqlite3

        with sqlite3.connect(db) as connection:
            for (pid,) in connection.execute("select pid from jobs where pid is not null"):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture
def make_service(tmp_path, tiny_folder):
    started = []

    def make(workers: int = 1, host: str = "127.0.0.1", env: dict | None = None, root: Path | None = None,
             extra: list[str] | None = None) -> Service:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        service = Service(root or tmp_path / "outputs", data, workers, host, env, extra)
        started.append(service)
        return service.start()

    yield make
    for service in started:
        if service.process and service.process.poll() is None:
            service.kill()
        service.stop_jobs()
        service.client.close()
