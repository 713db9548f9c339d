"""The container image (deploy/docker/Dockerfile) and the local stack
(deploy/docker-compose.yml), checked without a Docker daemon: the compose file passes
`docker-compose config` (its schema), every host path it mounts and every file the image
copies exists and reaches the build, and the pieces agree with each other (user ids, socket
path, ports, the config intact resolves, the Prometheus config promtool accepts as mounted).
Building the image and starting the stack need a Docker daemon and are not run here."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from intact.config import Overrides, resolve

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
SIDECAR = DEPLOY / "kubernetes" / "base" / "deployment.yaml"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            found.append((keyword.upper(), args.strip()))
            pending = ""
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return env


def one(keyword: str) -> str:
    (args,) = [a for k, a in final_stage() if k == keyword]
    return args


def excluded(path: str) -> bool:
    """Whether Dockerfile.dockerignore keeps ``path`` (relative to the repository root) out
    of the build context: the last pattern matching it or one of its parent directories wins."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        keep = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        any_depth = pattern.removeprefix("**/")
        if any(
            fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(Path(c).name, any_depth)
            for c in candidates
        ):
            verdict = not keep
    return verdict


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def host_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", ()):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def test_the_compose_file_passes_docker_compose_config(docker_compose: str) -> None:
    done = subprocess.run(
        [docker_compose, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_stack_is_intact_the_simulator_an_app_prometheus_and_grafana(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {"simulator", "intact", "app", "prometheus", "grafana"}
    for name in ("simulator", "intact"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
        assert services[name]["read_only"] is True
    assert services["simulator"]["entrypoint"] == ["intact", "simulate-upstream"]
    assert "entrypoint" not in services["intact"]  # the image's: intact run


def test_every_host_path_the_stack_mounts_exists(compose: dict[str, Any]) -> None:
    missing = [
        f"{name}: {host}"
        for name, service in compose["services"].items()
        for host in host_mounts(service).values()
        if not host.exists()
    ]
    assert not missing, missing


def test_every_file_the_image_copies_exists_and_is_in_the_build_context() -> None:
    copies = [shlex.split(args) for keyword, args in instructions() if keyword == "COPY"]
    sources = [src for args in copies if not args[0].startswith("--from") for src in args[:-1]]
    assert sources == ["pyproject.toml", "README.md", "constraints.txt", "daemon/"]
    for source in sources:
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        assert files and not [f for f in files if excluded(str(f.relative_to(REPO)))], source
    # and the context stays small: no virtualenv, tests or git history
    for path in (".venv/bin/python", "tests/ops/test_docker.py", ".git/HEAD", "bench"):
        assert excluded(path), path


def test_the_image_installs_the_daemon_without_the_demo_extra() -> None:
    (install,) = [a for k, a in instructions() if k == "RUN" and "pip install" in a]
    assert re.search(r"--constraint constraints\.txt \.(\s|$)", install), install


def test_the_image_runs_intact_as_the_sidecar_user_with_the_socket_in_a_volume() -> None:
    entrypoint = json.loads(one("ENTRYPOINT"))
    assert entrypoint == ["intact", "run"]
    user, group = one("USER").split(":")
    assert user != "0" and user.isdigit() and group.isdigit()
    (create_user,) = [a for k, a in final_stage() if k == "RUN" and "useradd" in a]
    assert f"--uid {user}" in create_user and f"--gid {group}" in create_user
    (volume,) = json.loads(one("VOLUME"))
    env = image_env()
    assert str(Path(env["INTACT_SOCKET"]).parent) == volume
    assert f"install -d -o intact -g intact -m 0750 {volume}" in create_user
    assert env["INTACT_METRICS_ADDR"] == f"0.0.0.0:{one('EXPOSE')}"
    # the Kubernetes sidecar runs the image as the same user and group
    pod = yaml.safe_load(SIDECAR.read_text())["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["securityContext"]["runAsUser"] == int(user)
    assert (
        sidecar["securityContext"]["runAsGroup"] == int(group) == pod["securityContext"]["fsGroup"]
    )


def test_the_stacks_intact_config_resolves_and_points_at_the_simulator(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    mounts = host_mounts(services["intact"])
    config_path = services["intact"]["command"][1]
    env = image_env()
    cfg = resolve(Overrides(config=str(mounts[config_path])), environ=env)
    assert cfg.socket_path() == env["INTACT_SOCKET"]
    (upstream,) = cfg.upstreams
    url = urlsplit(upstream.base_url)
    simulator = services["simulator"]["command"]
    assert url.hostname == "simulator"
    assert str(url.port) == simulator[simulator.index("--port") + 1]
    assert cfg.server.drain_timeout < float(services["intact"]["stop_grace_period"].rstrip("s"))
    # the app reaches the socket through the shared volume, as a member of intact's group
    app = services["app"]
    socket_dir = str(Path(env["INTACT_SOCKET"]).parent)
    assert f"intact-socket:{socket_dir}" in services["intact"]["volumes"]
    assert f"intact-socket:{socket_dir}" in app["volumes"]
    assert app["group_add"] == [one("USER").split(":")[1]]
    traffic = host_mounts(app)[app["entrypoint"][1]].read_text()
    assert f"--unix-socket {env['INTACT_SOCKET']}" in traffic


def test_the_stacks_prometheus_config_passes_promtool_as_mounted(
    compose: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    """/etc/prometheus rebuilt from the service's mounts, then `promtool check config`."""
    mounts = host_mounts(compose["services"]["prometheus"])
    etc = tmp_path / "etc" / "prometheus"
    etc.mkdir(parents=True)
    for target, host in mounts.items():
        assert target.startswith("/etc/prometheus/"), target
        shutil.copy(host, etc / Path(target).name)
    done = subprocess.run(
        [promtool, "check", "config", str(etc / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout
    config = yaml.safe_load((etc / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "intact"
    (static,) = job["static_configs"]
    assert static["targets"] == [f"intact:{one('EXPOSE')}"]
    assert set(static["labels"]) == {"namespace", "pod"}


def test_the_stacks_grafana_provisions_the_dashboards_and_prometheus(
    compose: dict[str, Any],
) -> None:
    mounts = host_mounts(compose["services"]["grafana"])
    provider_dir = mounts["/etc/grafana/provisioning/dashboards"]
    (provider,) = yaml.safe_load((provider_dir / "intact.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == REPO / "dashboards"
    datasources = mounts["/etc/grafana/provisioning/datasources/prometheus.yml"]
    (source,) = yaml.safe_load(datasources.read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert (REPO / "dashboards" / Path(home).name).exists()
    assert Path(home).parent == Path(provider["options"]["path"])
