"""compose.yaml passes the app exactly the settings it reads, and hard-codes no secret.

`docker-compose config` (CI) checks that the file is valid compose; this checks that what
it hands our containers means something to the app: a misspelt variable is silently
ignored by the app (extra="ignore"), so it would only show in production, as a default.
"""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_REFERENCE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
# What an operator sets (compose.yaml's header), as they would.
OPERATOR = {
    "POSTGRES_PASSWORD": "a-long-postgres-password",
    # As the README's .env example makes one: secrets.token_urlsafe(48).
    "SECRET_KEY": "pE0u3yGq9Jb2Vx7LmN4sT1wZc8HkR6fAdQy5UoXiBn3gWjKv0YtMl9SrCe2PhDa7",
    "SMTP_HOST": "mail.example.com",
}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def our_services() -> dict[str, dict[str, str]]:
    """The environment of each service that runs our image (built from this repository)."""
    return {
        name: service.get("environment", {})
        for name, service in compose()["services"].items()
        if "build" in service
    }


def interpolate(value: str, variables: dict[str, str]) -> str:
    """As compose does, for the forms compose.yaml uses; a required one unset fails."""

    def substitute(reference: re.Match[str]) -> str:
        name, operator, argument = reference.groups()
        if variables.get(name):
            return variables[name]
        if operator and operator.endswith("?"):
            raise AssertionError(f"{name} is required: {argument}")
        return argument or ""

    return _REFERENCE.sub(substitute, value)


def test_the_app_services_are_a_migration_and_several_replicas() -> None:
    services = compose()["services"]
    assert set(our_services()) == {"migrate", "app"}
    assert services["migrate"]["command"] == ["userapi", "migrate"]
    assert services["app"]["deploy"]["replicas"] >= 2
    assert services["app"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["postgres"]["healthcheck"]
    assert services["postgres"]["volumes"]
    # One URL: only the load balancer publishes a port.
    assert [name for name, service in services.items() if "ports" in service] == ["lb"]


def test_every_variable_passed_to_the_app_is_a_setting_it_reads() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    for service, environment in our_services().items():
        unknown = set(environment) - settings
        assert not unknown, f"{service} passes {sorted(unknown)}, which the app never reads"


def test_the_passed_environment_is_a_valid_production_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for service, environment in our_services().items():
        for name in {name.upper() for name in Settings.model_fields}:
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, interpolate(str(value), OPERATOR))
        settings = load_settings()
        assert settings.env == "production", service
        assert settings.resolved_database_url == (
            "postgresql+asyncpg://userapi:a-long-postgres-password@postgres:5432/userapi"
        )
        assert settings.secret_key == OPERATOR["SECRET_KEY"]
        assert settings.smtp_host == "mail.example.com"
        assert settings.auto_migrate is False  # the migrate service does it, once
        assert settings.metrics_enabled is False  # never exposed unless chosen


def test_no_secret_is_written_in_the_file() -> None:
    services = compose()["services"]
    environments = [*our_services().values(), services["postgres"]["environment"]]
    for environment in environments:
        for name, value in environment.items():
            if re.search("PASSWORD|SECRET|TOKEN", name):
                assert _REFERENCE.fullmatch(str(value)), f"{name} is written in compose.yaml"
    # The database password reaches the app only through the operator's variable.
    for environment in our_services().values():
        with pytest.raises(AssertionError, match="POSTGRES_PASSWORD is required"):
            interpolate(environment["DATABASE_URL"], {})
        with pytest.raises(AssertionError, match="SECRET_KEY is required"):
            interpolate(environment["SECRET_KEY"], {})


def test_the_files_compose_needs_are_in_the_repository() -> None:
    lb = compose()["services"]["lb"]
    mounted = [volume.split(":")[0] for volume in lb["volumes"]]
    assert all((ROOT / path).is_file() for path in mounted), mounted
    # The build context leaves everything out, then lets the sources in: a .env or a
    # data/ folder can never reach an image.
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    assert {"!src", "!features", "!migrations", "!pyproject.toml"} <= set(rules)
