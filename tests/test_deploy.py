"""deploy/: the compose file and the Kubernetes manifests, checked against their schemas and for
what a user relies on (probe paths, the Secret behind MAVERA_API_KEY, SSE through nginx, one
ledger and one Redis for both replicas).

Docker is not run here: the Compose Specification's JSON schema (as check-jsonschema vendors
it) and the Kubernetes OpenAPI schemas (as kubernetes-validate bundles them) are the checks.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from app.config_sections import ServerSettings, UpstreamSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# Native sidecars (init containers with restartPolicy: Always) are on by default from 1.29.
KUBERNETES_VERSION = "1.29.0"
GATEWAY_PORT = 8080


def _image_env() -> dict[str, str]:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return dict(parser.envs)


def _manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize("path", sorted((DEPLOY / "kubernetes").glob("*.yaml")), ids=str)
def test_kubernetes_manifests_are_valid_for_the_api(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        # strict: a field the API does not know (a typo) fails too
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_native_sidecar_needs_a_kubernetes_that_knows_it() -> None:
    sidecar = _manifests()["Deployment/my-app"]
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(sidecar, "1.27.0", strict=True)


def test_the_deployment_probes_reads_its_secret_and_outlasts_the_drain() -> None:
    manifests = _manifests()
    deployment = manifests["Deployment/mavera-gateway"]
    pod = deployment["spec"]["template"]["spec"]
    [gateway] = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert gateway["ports"] == [{"name": "http", "containerPort": GATEWAY_PORT}]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["resources"]["requests"].keys() == {"cpu", "memory"}

    secret = manifests["Secret/mavera-gateway"]
    env = _env(gateway)
    for variable, key in (
        ("MAVERA_API_KEY", "mavera-api-key"),
        ("MAVERA_GATEWAY_ADMIN_KEY", "admin-key"),
        ("MAVERA_GATEWAY_DATABASE_URL", "database-url"),
        ("MAVERA_GATEWAY_REDIS_URL", "redis-url"),
    ):
        assert env[variable] == {"secretKeyRef": {"name": "mavera-gateway", "key": key}}
        assert key in secret["stringData"]
    assert secret["stringData"]["mavera-api-key"].startswith("REPLACE_")
    assert secret["stringData"]["database-url"].startswith("postgresql://")
    assert secret["stringData"]["redis-url"].startswith("redis://")

    grace = float(env["MAVERA_GATEWAY_SERVER__SHUTDOWN_GRACE_S"])
    pre_stop = int(gateway["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace

    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert f"{context['runAsUser']}:{context['runAsGroup']}" == _dockerfile_user()
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False


def _dockerfile_user() -> str:
    users = [
        i["value"]
        for i in DockerfileParser(path=str(ROOT / "Dockerfile")).structure
        if i["instruction"] == "USER"
    ]
    return str(users[-1])


def test_the_service_routes_to_the_deployment_pods() -> None:
    manifests = _manifests()
    service = manifests["Service/mavera-gateway"]["spec"]
    template = manifests["Deployment/mavera-gateway"]["spec"]["template"]
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert (
        service["ports"][0]["targetPort"] == template["spec"]["containers"][0]["ports"][0]["name"]
    )


def test_the_sidecar_variant_is_a_native_sidecar_on_loopback() -> None:
    pod = _manifests()["Deployment/my-app"]["spec"]["template"]["spec"]
    [gateway] = pod["initContainers"]
    assert gateway["restartPolicy"] == "Always"
    env = _env(gateway)
    assert env["MAVERA_GATEWAY_SERVER__HOST"] == "127.0.0.1"
    assert env["MAVERA_API_KEY"] == {
        "secretKeyRef": {"name": "mavera-gateway", "key": "mavera-api-key"}
    }
    probe = " ".join(gateway["startupProbe"]["exec"]["command"])
    assert f"http://127.0.0.1:{env['MAVERA_GATEWAY_SERVER__PORT']}/readyz" in probe
    assert "/healthz" in " ".join(gateway["livenessProbe"]["exec"]["command"])
    assert gateway["securityContext"]["runAsNonRoot"] is True
    [app] = pod["containers"]
    base_url = _env(app)["OPENAI_BASE_URL"]
    assert base_url == f"http://127.0.0.1:{env['MAVERA_GATEWAY_SERVER__PORT']}/v1"
    assert pod["terminationGracePeriodSeconds"] > float(
        env["MAVERA_GATEWAY_SERVER__SHUTDOWN_GRACE_S"]
    )


def test_the_compose_file_follows_the_compose_specification() -> None:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendored.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []
    broken = _compose()
    broken["services"]["lb"]["proxy_buffering"] = "off"  # the check does catch a stray key
    assert not validator.is_valid(broken)


def test_both_replicas_share_one_postgres_and_one_redis() -> None:
    services = _compose()["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway-")}
    assert len(gateways) == 2
    for service in gateways.values():
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert context == ROOT and (context / service["build"]["dockerfile"]).is_file()
        env = service["environment"]
        assert env["MAVERA_API_KEY"].startswith("${MAVERA_API_KEY:?")  # from deploy/.env
        assert env["MAVERA_GATEWAY_ADMIN_KEY"].startswith("${MAVERA_GATEWAY_ADMIN_KEY:?")
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        grace = float(_image_env()["MAVERA_GATEWAY_SERVER__SHUTDOWN_GRACE_S"])
        assert int(service["stop_grace_period"].removesuffix("s")) > grace
    urls = {
        (
            s["environment"]["MAVERA_GATEWAY_DATABASE_URL"],
            s["environment"]["MAVERA_GATEWAY_REDIS_URL"],
        )
        for s in gateways.values()
    }
    [(database, redis)] = urls
    assert re.fullmatch(
        r"postgresql://gateway:\$\{POSTGRES_PASSWORD:\?[^}]*\}@postgres:5432/gateway", database
    )
    assert redis == "redis://redis:6379/0"
    assert {"postgres", "redis", "lb"} <= services.keys()
    assert "MAVERA_API_KEY" not in json.dumps(services["postgres"])
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["lb"]["volumes"]
    assert set(services["lb"]["depends_on"]) == set(gateways)


def test_nginx_passes_streams_through_to_both_replicas() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    directives = [
        line.split("#", 1)[0].strip() for line in conf.splitlines() if line.split("#", 1)[0].strip()
    ]
    assert "proxy_buffering off;" in directives
    assert "proxy_http_version 1.1;" in directives
    assert 'proxy_set_header Connection "";' in directives
    [read_timeout] = [d for d in directives if d.startswith("proxy_read_timeout ")]
    assert int(read_timeout.split()[1].removesuffix("s;")) >= UpstreamSettings().total_timeout_s
    upstream = re.search(r"upstream mavera_gateway \{(.*?)\}", conf, re.S)
    assert upstream is not None
    servers = re.findall(r"^\s*server (\S+)", upstream.group(1), re.M)
    gateways = [name for name in _compose()["services"] if name.startswith("gateway-")]
    assert servers == [f"{name}:{GATEWAY_PORT}" for name in gateways]
    assert re.search(r"^\s*keepalive \d+;", upstream.group(1), re.M)
    [idle] = re.findall(r"keepalive_timeout (\d+)s;", upstream.group(1))
    assert int(idle) < ServerSettings().keepalive_timeout_s  # nginx closes idle ones first
