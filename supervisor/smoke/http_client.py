"""Blocking HTTP to the targets and the execution service, with one timeout per request.

The smoke test is a short command-line run, so it uses `urllib` and no event loop. HTTP error
statuses, connection failures, timeouts and bodies that are not the expected JSON or text become
`TargetError` with the method and URL, so each ends as a FAIL line of the report.
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
        return _decode_json("GET", url, self._request(url, None))

    def get_text(self, url: str) -> str:
        body = self._request(url, None)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise TargetError(
                f"GET {url} returned a body that is not UTF-8 text: {error}"
            ) from error

    def post_json(self, url: str, body: Any) -> Any:
        answer = self._request(url, json.dumps(body).encode("utf-8"))
        return _decode_json("POST", url, answer) if answer.strip() else None

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


def _decode_json(method: str, url: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        snippet = body[:120].decode("utf-8", "replace")
        raise TargetError(
            f"{method} {url} returned a body that is not JSON ({error}): {snippet!r}; check that "
            "the URL points at a supervisor or the execution stub"
        ) from error
