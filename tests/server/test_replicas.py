"""Two `vitrine serve` processes on one shared `current` pointer behind client-side round robin: searches spread
over both, a re-pointed `current` reaches every replica with no failed request, and a lost replica goes unnoticed."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import make_items
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item
from vitrine.serving.tenancy import point_current
from vitrine.server.client import ROUND_ROBIN, VitrineClient

TIMEOUT_S = 45.0  # every wait below polls up to this; a loaded 2-core CI box needs the margin, a quiet one seconds


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Replica:
    proc: subprocess.Popen
    target: str
    metrics_port: int

    def searches_answered(self) -> int:
        """Search RPCs this process answered OK, from its own Prometheus endpoint."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        found = re.search(r'^vitrine_rpc_requests_total\{(?=[^}]*rpc="Search")(?=[^}]*code="OK")[^}]*\} (\S+)$', text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def bundle_version(self) -> str:
        with VitrineClient(self.target) as client:
            return client.info()["bundle_version"]


@dataclass
class Traffic:
    """Searches sent one after another through one round-robin channel from a background thread."""

    client: VitrineClient
    answers: list[tuple[float, str]] = field(default_factory=list)  # (time the request was sent, bundle_version)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                self.answers.append((sent, self.client.search("red shirt", k=3).bundle_version))
            except Exception as exc:  # noqa: BLE001 - every failure is a finding, reported by the test
                self.errors.append(f"{time.monotonic() - sent:.2f} s: {exc!r}"[:300])

    def answered_since(self, t: float) -> list[str]:
        return [version for sent, version in list(self.answers) if sent >= t]


def background(client: VitrineClient) -> tuple[Traffic, threading.Thread]:
    traffic = Traffic(client)
    thread = threading.Thread(target=traffic.run, name="replica-traffic", daemon=True)
    thread.start()
    return traffic, thread


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_st) -> dict[str, Path]:
    """Two bundles of one catalog (v2 adds an item) beside a `current` pointer at v1, as on a shared volume."""
    from vitrine.encoders.text import SentenceTransformerEncoder

    root = tmp_path_factory.mktemp("shared-volume")
    encoder = SentenceTransformerEncoder(tiny_st, device="cpu")
    config = IndexerConfig(ann=AnnConfig(factory="Flat"), onnx=False, progress=False)
    items = make_items()
    build_bundle(items, root / "v1", encoder, config)
    build_bundle([*items, Item(id="9", title="Green Bag", category="Accessories > Bags")], root / "v2", encoder, config)
    point_current(root / "current", root / "v1")
    return {"v1": root / "v1", "v2": root / "v2", "current": root / "current"}


@pytest.fixture(scope="module")
def replicas(bundles, serve_process) -> Iterator[list[Replica]]:
    ports = [free_port(), free_port()]

    def start(metrics_port: int) -> Replica:
        proc, target = serve_process(bundles["current"], ["--read-only", "--watch", "0.2", "--metrics-port", str(metrics_port)],
                                    timeout_s=120)
        return Replica(proc, target, metrics_port)

    with ThreadPoolExecutor(2) as pool:  # both load at once, as a Deployment's pods do
        futures = [pool.submit(start, port) for port in ports]
    if any(f.exception() for f in futures):
        for f in futures:
            if not f.exception():
                f.result().proc.kill()
                f.result().proc.wait()
        raise next(f.exception() for f in futures if f.exception())  # type: ignore[misc]
    started = [f.result() for f in futures]
    yield started
    for replica in started:
        if replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGTERM)
    for replica in started:
        try:
            replica.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            replica.proc.kill()
            replica.proc.wait()


def round_robin(replicas: list[Replica]) -> VitrineClient:
    """One channel over both replicas, as a shop backend would open it on a headless Service's addresses."""
    return VitrineClient("ipv4:" + ",".join(r.target for r in replicas), timeout_s=20.0, options=ROUND_ROBIN)


def test_round_robin_spreads_searches_over_both_replicas(replicas):
    with round_robin(replicas) as client:
        client.wait_ready(TIMEOUT_S)
        # The channel is READY once one replica's health check passes; search until the other has answered too.
        before = [r.searches_answered() for r in replicas]

        def both_answered() -> bool:
            client.search("red shirt", k=3)
            return all(r.searches_answered() > b for r, b in zip(replicas, before))

        wait_until(both_answered, "both replicas to answer a search")
        before = [r.searches_answered() for r in replicas]
        for _ in range(40):
            assert client.search("red shirt", k=3).hits
        served = [r.searches_answered() - b for r, b in zip(replicas, before)]
    assert sum(served) == 40
    assert min(served) >= 18, served  # round robin alternates: 20 / 20 (a reconnect may shift one or two)


def test_a_re_pointed_current_reaches_every_replica_with_no_failed_search(replicas, bundles):
    old = replicas[0].bundle_version()
    with round_robin(replicas) as client:
        client.wait_ready(TIMEOUT_S)
        traffic, thread = background(client)
        try:
            wait_until(lambda: len(traffic.answers) >= 10, "searches before the swap")
            point_current(bundles["current"], bundles["v2"])
            wait_until(lambda: all(r.bundle_version() != old for r in replicas), "every replica to load v2", every_s=0.2)
            switched = time.monotonic()
            wait_until(lambda: len(traffic.answered_since(switched)) >= 20, "searches after the swap")
        finally:
            traffic.stop.set()
            thread.join(timeout=30)
    new = {r.bundle_version() for r in replicas}
    assert len(new) == 1 and old not in new
    assert not traffic.errors, traffic.errors[:5]
    assert {v for _, v in traffic.answers} == {old, *new}  # searches ran across the switch and saw both
    assert set(traffic.answered_since(switched)) == new  # once both switched, no replica answers from the old bundle


# The last two tests stop replicas, so they come last (pytest runs a file in order); the second replica of the
# kill test is its own, and replicas[0] is never stopped before the fixture's teardown.
def test_searches_keep_succeeding_while_a_replica_drains(replicas):
    with round_robin(replicas) as client:
        client.wait_ready(TIMEOUT_S)
        traffic, thread = background(client)
        try:
            wait_until(lambda: len(traffic.answers) >= 10, "searches before the loss")
            # SIGTERM: health says NOT_SERVING, the server drains its in-flight searches and the channel moves on.
            replicas[1].proc.send_signal(signal.SIGTERM)
            assert replicas[1].proc.wait(timeout=TIMEOUT_S) == 0
            gone = time.monotonic()
            wait_until(lambda: len(traffic.answered_since(gone)) >= 20, "searches after the replica stopped")
        finally:
            traffic.stop.set()
            thread.join(timeout=30)
    assert not traffic.errors, traffic.errors[:5]
    assert replicas[0].proc.poll() is None


def test_a_kill_9_fails_no_search(replicas, bundles, serve_process):
    """Without a drain, the search in flight on the killed process fails with UNAVAILABLE; ROUND_ROBIN retries it on
    the survivor, and later ones go there directly."""
    survivor = replicas[0]
    victim, victim_target = serve_process(bundles["current"], ["--read-only"], timeout_s=120)
    try:
        before = survivor.searches_answered()
        with VitrineClient(f"ipv4:{survivor.target},{victim_target}", timeout_s=20.0, options=ROUND_ROBIN) as client:
            client.wait_ready(TIMEOUT_S)
            traffic, thread = background(client)
            try:
                wait_until(lambda: len(traffic.answers) >= 10, "searches before the kill")
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                killed = time.monotonic()
                wait_until(lambda: len(traffic.answered_since(killed)) >= 20, "searches after the kill")
            finally:
                traffic.stop.set()
                thread.join(timeout=30)
        assert not traffic.errors, traffic.errors
        assert survivor.searches_answered() - before >= 20
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()
