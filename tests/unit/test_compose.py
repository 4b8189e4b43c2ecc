"""docker-compose.yml and its Dockerfile, checked without a Docker engine."""

from __future__ import annotations

import importlib.util
import shlex
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_claim import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(compose["services"], dict)
    return compose["services"]


def test_the_services(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "redis", "worker", "demo"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


@pytest.mark.parametrize(("name", "port", "probe"), [("postgres", 5432, "pg_isready"),
                                                      ("redis", 6379, "redis-cli")])
def test_servers_have_default_ports_and_health_checks(services: dict[str, Any], name: str,
                                                      port: int, probe: str) -> None:
    service = services[name]
    assert f"{port}:{port}" in service["ports"]
    check = service["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert probe in " ".join(check["test"][1:])
    assert check["retries"] >= 10


def test_postgres_matches_the_tests_default_url(services: dict[str, Any]) -> None:
    env = services["postgres"]["environment"]
    assert env["POSTGRES_DB"] == "test"
    assert env["POSTGRES_USER"] == "postgres"


@pytest.mark.parametrize("name", ["worker", "demo"])
def test_app_services_build_here_and_wait_for_healthy_servers(services: dict[str, Any],
                                                               name: str) -> None:
    service = services[name]
    assert service["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    assert service["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                     "redis": {"condition": "service_healthy"}}
    text = " ".join(str(v) for v in service.get("environment", {}).values())
    text += " " + service["command"]
    for url in [w for w in text.split() if "://" in w]:
        assert urllib.parse.urlsplit(url).hostname in services, url


def test_worker_command_names_an_importable_app(services: dict[str, Any]) -> None:
    argv = shlex.split(services["worker"]["command"])
    assert argv[:2] == ["celery", "-A"]
    module = argv[2]
    assert importlib.util.find_spec(module.rsplit(".", 1)[0]) is not None
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()


def test_demo_command_parses(services: dict[str, Any]) -> None:
    argv = shlex.split(services["demo"]["command"])
    assert argv[:2] == ["celery-claim", "demo"]
    demo_command = cli.claim.commands["demo"]
    ctx = demo_command.make_context("demo", argv[2:])
    assert ctx.params["demo_database_url"].startswith("postgresql+psycopg://")
    assert ctx.params["broker_url"].startswith("redis://")


def test_dockerfile_copies_what_exists() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    assert any("pip install" in line for line in lines)
