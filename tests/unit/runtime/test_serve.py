"""The ``python -m services.<name> run`` runner: a failed task stops the service with exit
status 1 after a clean shutdown of the app (its lifespan's on_shutdown and the broker)."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest

from shared.runtime.service import Runtime, serve
from shared.runtime.settings import ServiceSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeApp:
    """What serve() uses of the FastStream app: start, stop, the runtime, an ASGI callable."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.runtime = Runtime(settings)
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"up"})


async def test_a_failed_task_stops_the_service_with_exit_status_one() -> None:
    settings = ServiceSettings(http_port=free_port(), http_host="127.0.0.1")
    app = FakeApp(settings)

    def answer() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.http_port}/", timeout=2) as r:
            return r.read()

    async def fail_once_serving() -> None:
        for _ in range(100):  # the HTTP server comes up after the app's start
            try:
                assert await asyncio.to_thread(answer) == b"up"
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the HTTP server never answered")
        assert app.calls == ["start"]
        app.runtime.failed.set()  # what a failed relay, probe, sweep or batch handler does

    failing = asyncio.create_task(fail_once_serving())
    with pytest.raises(SystemExit) as exit:
        await serve(app, settings)  # type: ignore[arg-type]  # (in a task SystemExit escapes)
    await failing  # its assertions held
    assert exit.value.code == 1
    assert app.calls == ["start", "stop"]
