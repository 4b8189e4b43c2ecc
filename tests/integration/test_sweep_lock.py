"""A worker killed while it sweeps leaves kombu's sweep lock behind in Redis.

kombu's Redis transport puts messages past their ``visibility_timeout`` back
in their queue from a sweep that holds a lock (``unacked_mutex_expire``). A
process SIGKILLed inside the sweep never releases it, and no sweep runs
until it expires: 300 s at kombu's default. The soak and the proof kill
workers about once a second, so their runs set the lock's life to
:data:`~celery_claim.proof.config.SWEEP_LOCK_SECONDS`
(docs/operations.md, "When the sweep's lock is left behind").

Here a real process takes a message without acknowledging it, enters the
sweep's lock as kombu's sweep does, and SIGKILLs itself there; a consumer
with the same transport options then sweeps every half second and waits for
the message. With the runs'
options it comes back; with kombu's default lock life (the control) it does
not, and the lock is still there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from kombu import Connection

from celery_claim._soak_app import SoakConfig
from celery_claim.proof.config import SWEEP_LOCK_SECONDS

pytestmark = [pytest.mark.redis]

#: Long enough for the lock of the runs to expire and a sweep to follow.
WINDOW = SWEEP_LOCK_SECONDS + 5

KILLED_SWEEPER = r"""
import json, os, signal, sys
from kombu import Connection
from kombu.transport.redis import Mutex

url, options, queue = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
with Connection(url, transport_options=options) as connection:
    simple = connection.SimpleQueue(queue)
    simple.get(timeout=10)  # delivered, never acknowledged
    channel = simple.channel
    qos = channel.qos
    with Mutex(channel.client, qos.unacked_mutex_key, qos.unacked_mutex_expire):
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-sweep
"""


def _options(redis_url: str, prefix: str, *, default_lock: bool) -> dict[str, Any]:
    config = SoakConfig(name=prefix, database_url="postgresql://unused", broker_url=redis_url,
                        visibility_timeout=1.0)
    options = {**config.transport_options(), "global_keyprefix": f"{prefix}:"}
    if default_lock:
        del options["unacked_mutex_expire"]
    return options


def _comes_back(redis_url: str, *, default_lock: bool) -> tuple[float | None, int]:
    """Seconds until the killed sweeper's message came back (None: not in the
    window), and the sweep lock's remaining life in Redis then."""
    prefix = f"sweeplock-{uuid.uuid4().hex[:8]}"
    options = _options(redis_url, prefix, default_lock=default_lock)
    queue = "sweep-lock"
    client = redis.Redis.from_url(redis_url)
    try:
        with Connection(redis_url, transport_options=options) as connection:
            simple = connection.SimpleQueue(queue)
            simple.put({"job": 1})
            killed = subprocess.run(
                [sys.executable, "-c", KILLED_SWEEPER, redis_url, json.dumps(options), queue],
                capture_output=True, text=True, timeout=60, check=False)
            assert killed.returncode == -signal.SIGKILL, killed.stderr
            lock = f"{prefix}:unacked_mutex"
            assert client.exists(lock), "the killed sweeper left no lock"
            started = time.monotonic()
            while time.monotonic() - started < WINDOW:
                # kombu's sweep, as a worker's consumer runs it every second
                # with the runs' options (kombu before 5.7 has no option for
                # that, and sweeps on every tenth empty poll).
                simple.channel.qos.restore_visible(interval=1)
                try:
                    message = simple.get(timeout=0.5)
                except simple.Empty:
                    continue
                message.ack()
                return time.monotonic() - started, int(client.ttl(lock))
            return None, int(client.ttl(lock))
    finally:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_a_sweeper_killed_holding_the_lock_holds_sweeps_off_only_for_the_runs_lock_life(
        redis_url: str) -> None:
    with ThreadPoolExecutor(2) as pool:
        runs = pool.submit(_comes_back, redis_url, default_lock=False)
        control = pool.submit(_comes_back, redis_url, default_lock=True)
        (back_after, _), (control_back, control_ttl) = runs.result(), control.result()
    # The runs' options: the message is back once the lock lapsed.
    assert back_after is not None, f"the message did not come back in {WINDOW} s"
    assert back_after >= SWEEP_LOCK_SECONDS - 1.5, back_after
    # kombu's default: the same kill holds every sweep off for minutes.
    assert control_back is None, control_back
    assert control_ttl > 250, control_ttl
