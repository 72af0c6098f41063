"""A client for an `HttpServer` started in the test's own event loop."""

from __future__ import annotations

from typing import Any

import aiohttp

from supervisor.http_server import HttpServer


class ServerClient:
    """Starts `server` on a free loopback port and sends requests to it with aiohttp."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> ServerClient:
        port = await self.server.start("127.0.0.1", 0)
        self.session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
        return self

    def post(self, path: str, **kwargs: Any) -> Any:
        assert self.session is not None, "call start() first"
        return self.session.post(path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        assert self.session is not None, "call start() first"
        return self.session.get(path, **kwargs)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.server.close(grace_s=1.0)
