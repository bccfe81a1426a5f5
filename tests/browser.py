"""A headless Chromium driven over the Chrome DevTools protocol, for the console's browser test.

Uses the Debian package `chromium` (deploy/local/bootstrap.sh installs it) and the `websockets`
client (a dev dependency): no WebDriver, nothing downloaded at test time.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import websockets

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--remote-debugging-port=0", "--remote-allow-origins=*")


class Browser:
    """One Chromium process with one page; ``close`` ends the process it started."""

    def __init__(self, profile: Path) -> None:
        self.proc = subprocess.Popen((str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}",
                                      "about:blank"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ids = itertools.count(1)
        self.ws: Any = None

    async def open(self, timeout: float = 60) -> Browser:
        deadline = time.monotonic() + timeout
        port = None
        assert self.proc.stderr is not None
        while port is None:
            line = await asyncio.to_thread(self.proc.stderr.readline)
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if found:
                port = int(found.group(1))
            elif (not line and self.proc.poll() is not None) or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start: {line!r}")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as r:
            target = orjson.loads(r.read())
        self.ws = await websockets.connect(target["webSocketDebuggerUrl"], max_size=None)
        await self.send("Page.enable")
        await self.send("Network.enable")
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call = next(self.ids)
        await self.ws.send(orjson.dumps({"id": call, "method": method, "params": params}).decode())
        while True:
            message = orjson.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if message.get("id") == call:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def settle(self, path_prefix: str, timeout: float = 30) -> str:
        """Wait until a new page (not one marked stale) at a URL whose path starts with
        ``path_prefix`` has loaded."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = await self.eval(
                    "[location.pathname, document.readyState, typeof window.__stale]")
                if state[0].startswith(path_prefix) and state[1] == "complete" and state[2] == "undefined":
                    return str(await self.eval("document.body.innerText"))
            except (RuntimeError, TimeoutError):
                pass  # the page is being replaced
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for a page at {path_prefix}")
            await asyncio.sleep(0.1)

    async def goto(self, url: str, then: str | None = None) -> str:
        """Open ``url`` and wait for its page (or the one it redirects to, at ``then``)."""
        await self.eval("window.__stale = 1")
        await self.send("Page.navigate", url=url)
        return await self.settle(then or urllib.parse.urlsplit(url).path)

    async def click(self, selector: str, then: str) -> str:
        """Click the element (a form button) and wait for the page it leads to."""
        await self.eval("window.__stale = 1; document.querySelector("
                        f"{orjson.dumps(selector).decode()}).click()")
        return await self.settle(then)


