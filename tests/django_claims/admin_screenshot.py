"""Take the admin screenshot in docs/img/django-admin.png with headless Chromium.

    python tests/django_claims/admin_screenshot.py [OUTPUT.png]

Makes a database of its own, migrates the example project (examples/django)
into it, runs real claims through the example's task (``.apply()``: successes
and duplicates) and the claim store (a live lease, and a lapsed one), starts
``manage.py runserver``, and points Chromium (Debian's ``chromium``) at the
claims changelist through a small local proxy that adds a logged-in
session's cookie. Everything is removed at the end.
"""

from __future__ import annotations

import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django"
SERVER = os.environ.get("CELERY_CLAIM_TEST_SERVER_URL", "postgresql://postgres@127.0.0.1:5432")

ROWS = """
import datetime
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from celery_claim.django.connector import claim_store
from shop.tasks import charge

for order in range(1001, 1007):
    for _ in range(1 + order % 3):  # duplicates of some orders
        charge.apply((order, 1250))
store = claim_store()
store.acquire("charge:1007", task_name="shop.tasks.charge", task_id="8d1c0f3e-live",
              owner="celery@worker-2/4121", payload_digest=None, lease_seconds=57)
store.acquire("charge:1008", task_name="shop.tasks.charge", task_id="2b7e91aa-stale",
              owner="celery@worker-1/3977", payload_digest=None, lease_seconds=57)
with connection.cursor() as cursor:  # its holder was killed two minutes ago
    cursor.execute("UPDATE celery_claims SET lease_expires_at = now() - interval '2 minutes' "
                   "WHERE key = 'charge:1008'")
user = User.objects.create_superuser("admin", "admin@example.com", "admin")
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proxy(target: int, cookie: str) -> http.server.ThreadingHTTPServer:
    """A local HTTP proxy to ``runserver`` that sends the session cookie."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            upstream = http.client.HTTPConnection("127.0.0.1", target, timeout=30)
            upstream.request("GET", self.path, headers={"Cookie": f"sessionid={cookie}",
                                                        "Host": "localhost"})
            reply = upstream.getresponse()
            body = reply.read()
            self.send_response(reply.status)
            for name, value in reply.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(output: Path) -> None:
    name = f"djshot{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DATABASE_URL": f"{SERVER}/{name}", "CELERY_BROKER_URL": "memory://",
           "PYTHONPATH": str(EXAMPLE)}
    psql = ["psql", SERVER + "/postgres", "-qc"]
    subprocess.run([*psql, f'CREATE DATABASE "{name}"'], check=True)
    server = None
    try:
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "-v0"], cwd=EXAMPLE, env=env, check=True)
        made = subprocess.run([*manage, "shell", "-c", ROWS], cwd=EXAMPLE, env=env, check=True,
                              capture_output=True, text=True)
        cookie = made.stdout.strip().splitlines()[-1]
        port = free_port()
        server = subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
                                  cwd=EXAMPLE, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        front = proxy(port, cookie)
        url = f"http://127.0.0.1:{front.server_port}/admin/celery_claim/claim/"
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--screenshot={output}",
                        "--window-size=1760,600", url], check=True, capture_output=True,
                       timeout=120)
        front.shutdown()
        print(f"wrote {output}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        subprocess.run([*psql, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img" / "django-admin.png")
         .resolve())
