"""Blocking HTTP to the targets and the execution service, with one timeout per request.

The smoke test is a short command-line run, so it uses `urllib` and no event loop. HTTP error
statuses, connection failures and timeouts become `TargetError` with the method and URL.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from supervisor.smoke.errors import TargetError


class HttpClient:
    """Blocking JSON and text requests with one timeout; errors become `TargetError`."""

    def __init__(self, timeout_s: float, token: str | None = None) -> None:
        self._timeout_s = timeout_s
        self._token = token

    def get_json(self, url: str) -> Any:
        # NOTE: a body that is not JSON raises json.JSONDecodeError, not TargetError. The run
        # then cleans up and ends with a traceback instead of a report.
        return json.loads(self._request(url, None))

    def get_text(self, url: str) -> str:
        return self._request(url, None).decode("utf-8")

    def post_json(self, url: str, body: Any) -> Any:
        answer = self._request(url, json.dumps(body).encode("utf-8"))
        return json.loads(answer) if answer.strip() else None

    def _request(self, url: str, data: bytes | None) -> bytes:
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
        if data is not None:
            request.add_header("Content-Type", "application/json")
            if self._token:
                request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise TargetError(
                f"{request.method} {url} returned HTTP {error.code}: {detail}"
            ) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise TargetError(f"{request.method} {url} failed: {error}") from error
