"""The scraper: polls every target's and the stub's `/stats` once a second during the run.

It runs as one greenlet on the master or local runner only. Scrapes start on whole Unix
seconds, as Locust's stats history rows are stamped, so the series join on `timestamp`. Each
target's `/stats` is requested with `window_s` equal to the interval, so its window p95s cover
exactly the last interval. Every few scrapes the greenlet also pages through `/timings`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gevent
import requests
from _series import STUB_COLUMNS, SUPERVISOR_COLUMNS, Snapshot, stub_row, supervisor_row
from _timings import EVENT_COLUMNS, EXECUTION_COLUMNS, LatencyHistogram, TimingsPager

logger = logging.getLogger(__name__)

SCRAPE_INTERVAL_S = 1.0
TIMINGS_EVERY_SCRAPES = 5
HTTP_TIMEOUT_S = 2.0


class ScrapeError(RuntimeError):
    """A `/stats` or `/timings` request failed or returned something other than JSON."""


def make_fetch_json(session: requests.Session) -> Callable[[str], Mapping[str, Any]]:
    def fetch_json(url: str) -> Mapping[str, Any]:
        try:
            response = session.get(url, timeout=HTTP_TIMEOUT_S)
            response.raise_for_status()
            body = response.json()
        except (requests.RequestException, json.JSONDecodeError) as error:
            raise ScrapeError(f"GET {url} failed: {error}") from error
        if not isinstance(body, Mapping):
            raise ScrapeError(f"GET {url} returned {type(body).__name__}, expected an object")
        return body

    return fetch_json


class Scraper:
    """Writes `supervisor_series.csv`, `stub_series.csv` and the timing CSVs of one run."""

    def __init__(self, *, targets: list[str], stub_url: str, bundle_dir: Path) -> None:
        self.targets = targets
        self.stub_url = stub_url
        self._session = requests.Session()
        self._fetch_json = make_fetch_json(self._session)
        self._open_files(bundle_dir)
        self.histogram = LatencyHistogram()
        self.pagers = [
            TimingsPager(
                t, self._fetch_json, self._events_file, self._executions_file, self.histogram
            )
            for t in targets
        ]
        self.first: dict[str, Snapshot] = {}
        self.last: dict[str, Snapshot] = {}
        self.stub_first: Snapshot | None = None
        self.stub_last: Snapshot | None = None
        self.origin_unix_s = 0.0
        self.scrape_failures = 0
        self._greenlet: gevent.Greenlet | None = None

    def _open_files(self, bundle_dir: Path) -> None:
        self._supervisor_file = (bundle_dir / "supervisor_series.csv").open("w", newline="")
        self._stub_file = (bundle_dir / "stub_series.csv").open("w", newline="")
        self._events_file = (bundle_dir / "event_timings.csv").open("w", newline="")
        self._executions_file = (bundle_dir / "execution_timings.csv").open("w", newline="")
        self._supervisor_csv = csv.DictWriter(self._supervisor_file, SUPERVISOR_COLUMNS)
        self._stub_csv = csv.DictWriter(self._stub_file, STUB_COLUMNS)
        self._supervisor_csv.writeheader()
        self._stub_csv.writeheader()
        csv.writer(self._events_file).writerow(EVENT_COLUMNS)
        csv.writer(self._executions_file).writerow(EXECUTION_COLUMNS)

    def take_baseline(self) -> None:
        """Scrape once before the load and skip the timing records of earlier runs."""
        self.scrape_once(time.time())
        for pager in self.pagers:
            try:
                pager.skip_existing()
            except ScrapeError as error:
                logger.warning("Skipping old timings of %s failed: %s", pager.target, error)
        logger.info("Scraper baseline taken for %d targets", len(self.targets))

    def start(self, origin_unix_s: float) -> None:
        self.origin_unix_s = origin_unix_s
        self._greenlet = gevent.spawn(self._loop)

    def _loop(self) -> None:
        scrapes = 0
        while True:
            now = time.time()
            gevent.sleep(math.floor(now / SCRAPE_INTERVAL_S + 1) * SCRAPE_INTERVAL_S - now)
            self.scrape_once(time.time())
            scrapes += 1
            if scrapes % TIMINGS_EVERY_SCRAPES == 0:
                self.read_timings()

    def scrape_once(self, now_unix_s: float) -> None:
        t_s = now_unix_s - self.origin_unix_s if self.origin_unix_s else 0.0
        for target in self.targets:
            url = f"{target}/stats?window_s={SCRAPE_INTERVAL_S:g}"
            snapshot = self._fetch_or_log(url)
            if snapshot is None:
                continue
            row = supervisor_row(
                timestamp=now_unix_s,
                t_s=t_s,
                target=target,
                snapshot=snapshot,
                previous=self.last.get(target),
            )
            self._supervisor_csv.writerow(row)
            self.first.setdefault(target, snapshot)
            self.last[target] = snapshot
        self._supervisor_file.flush()

        if self.stub_url:
            stub = self._fetch_or_log(f"{self.stub_url}/stats")
            if stub is not None:
                self._stub_csv.writerow(
                    stub_row(timestamp=now_unix_s, t_s=t_s, stub_url=self.stub_url, snapshot=stub)
                )
                self._stub_file.flush()
                self.stub_first = self.stub_first or stub
                self.stub_last = stub

    def _fetch_or_log(self, url: str) -> Snapshot | None:
        try:
            return self._fetch_json(url)
        except ScrapeError as error:
            self.scrape_failures += 1
            # The first failures show the cause; later ones are counted in metadata only.
            if self.scrape_failures <= 5:
                logger.warning("Scrape failed (%d so far): %s", self.scrape_failures, error)
            return None

    def read_timings(self) -> None:
        for pager in self.pagers:
            try:
                pager.read_available()
            except ScrapeError as error:
                logger.warning("Reading timings of %s failed: %s", pager.target, error)

    def finish(self) -> None:
        """Stop the greenlet, scrape a last time, read the remaining timings, close files."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True)
        self.scrape_once(time.time())
        self.read_timings()
        for file in (
            self._supervisor_file,
            self._stub_file,
            self._events_file,
            self._executions_file,
        ):
            file.close()
        self._session.close()
        logger.info(
            "Scraper finished: %d timing records read, %d dropped by the ring buffers",
            sum(p.events_read + p.executions_read for p in self.pagers),
            sum(p.dropped_records for p in self.pagers),
        )
