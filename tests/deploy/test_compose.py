"""docker-compose.yml and its GPU override: the Compose specification, and every path, port and link inside."""

from __future__ import annotations

import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploytools import (
    COMPOSE,
    COMPOSE_GPU,
    DEFAULT_MODEL,
    DOCKERFILES,
    REPO,
    compose_service,
    duration_seconds,
    image_env,
    load_yaml,
    stages,
)

CHECK_JSONSCHEMA = Path(sysconfig.get_path("scripts")) / "check-jsonschema"
VARIANTS = ["cpu", "gpu"]


def check_compose(*paths: Path) -> subprocess.CompletedProcess[str]:
    command = [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def binds(service: dict) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of the service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume["type"] == "bind":
                found[volume["target"]] = volume["source"]
        elif volume.startswith(("./", "/")):
            source, target = volume.split(":")[:2]
            found[target] = source
    return found


def test_compose_files_follow_the_compose_specification() -> None:
    result = check_compose(COMPOSE, COMPOSE_GPU)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = load_yaml(COMPOSE)
    broken["services"]["castream"]["ports"] = {"http": 8000}
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert check_compose(path).returncode != 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_builds_a_stage_of_the_right_dockerfile(variant: str) -> None:
    build = compose_service(variant)["build"]
    assert build["context"] == "."
    assert REPO / build["dockerfile"] == DOCKERFILES[variant]
    assert build["target"] in stages(DOCKERFILES[variant])
    assert compose_service(variant)["image"].endswith("0.1.0" + ("-gpu" if variant == "gpu" else ""))


@pytest.mark.parametrize("variant", VARIANTS)
def test_port_and_model_mount_match_the_service_settings(variant: str) -> None:
    service = compose_service(variant)
    env = {**image_env(DOCKERFILES[variant], service["build"]["target"]), **service["environment"]}
    port = env["CASTREAM_PORT"]
    assert [p.split(":")[-1] for p in service["ports"]] == [port]
    model = Path(env["CASTREAM_MODEL_PATH"])
    mounts = binds(service)
    assert mounts.get(model.parent.as_posix()) == "./" + DEFAULT_MODEL.parent.as_posix(), (
        f"{model} is not where the host's {DEFAULT_MODEL} (written by `make export`) is mounted"
    )
    assert model.name == DEFAULT_MODEL.name
    assert isinstance(service["environment"], dict), "environment as a mapping, so the override merges by name"


@pytest.mark.parametrize("variant", VARIANTS)
def test_stop_grace_period_covers_the_drain(variant: str) -> None:
    service = compose_service(variant)
    env = service["environment"]
    drain = float(env["CASTREAM_DRAIN_DELAY_S"]) + float(env["CASTREAM_SHUTDOWN_TIMEOUT_S"])
    assert duration_seconds(service["stop_grace_period"]) > drain


def test_gpu_override_reserves_a_gpu_and_only_touches_the_service() -> None:
    override = load_yaml(COMPOSE_GPU)
    assert set(override) == {"services"} and set(override["services"]) == {"castream"}
    (device,) = compose_service("gpu")["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] >= 1
    assert "deploy" not in compose_service("cpu")
    assert "cuda" in compose_service("gpu")["environment"]["CASTREAM_PROVIDERS"].split(",")


def test_bind_mounts_exist_except_the_exported_model() -> None:
    for name, service in load_yaml(COMPOSE)["services"].items():
        for target, source in binds(service).items():
            if source == "./" + DEFAULT_MODEL.parent.as_posix():
                continue
            assert (REPO / source).exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_prometheus_scrapes_the_service_by_its_compose_name_and_port() -> None:
    services = load_yaml(COMPOSE)["services"]
    prometheus = services["prometheus"]
    config_path = next(t for t, s in binds(prometheus).items() if s.endswith("prometheus.yml"))
    assert f"--config.file={config_path}" in prometheus["command"]
    config = load_yaml(REPO / binds(prometheus)[config_path])
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    port = compose_service("cpu")["environment"]["CASTREAM_PORT"]
    assert static["targets"] == [f"castream:{port}"]
    assert job["metrics_path"] == "/metrics"  # a real route: test_service_contract checks it


def test_grafana_provisioning_points_at_the_mounted_dashboards_and_prometheus() -> None:
    services = load_yaml(COMPOSE)["services"]
    grafana = services["grafana"]
    mounts = binds(grafana)
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    host_port = source["url"].removeprefix("http://")
    host, port = host_port.split(":")
    assert host in services and f"{port}:{port}" in services[host]["ports"]
    (provider,) = load_yaml(provisioning / "dashboards" / "castream.yml")["providers"]
    dashboards = provider["options"]["path"]
    assert dashboards in mounts and (REPO / mounts[dashboards] / "castream.json").is_file()
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent.as_posix() == dashboards and (REPO / mounts[dashboards] / home.name).is_file()
