"""Issue #19 without I/O: production checks, keys, lookups, the HTTP host's bounds and OpenAPI
document, and the deployment examples."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from cryptography.fernet import Fernet
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from shared.runtime import auth, crypto
from shared.runtime.http import json_body
from shared.runtime.outbox import Outbox, RawRecord
from shared.runtime.service import check_settings, http_app, secret_fingerprint
from shared.runtime.settings import DEV_DATA_KEY, ServiceSettings, secret_weakness
from services.enrollment.config import EnrollmentSettings

pytestmark = pytest.mark.security

ROOT = Path(__file__).resolve().parents[2]
AGENCIES = ("city-a", "suqian", "baoshan", "beijing")
STRONG = "Vq3x-Jk9Lm2Pz7Rt5Wy8Nb4Hc6Df1Gs0Ae_Qu"  # 38 characters, 37 distinct
TOKENS = orjson.dumps({auth.hash_token("t-auditor"): {"role": "auditor"}}).decode()


def production(**env: str) -> dict[str, str]:
    """Everything production needs, with ``env`` on top."""
    return {"ENVIRONMENT": "production", "PERSON_ID_SECRET": STRONG,
            "DATA_ENCRYPTION_KEY": Fernet.generate_key().decode(), "API_TOKENS": TOKENS,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD": "pw", "DATABASE_SSLMODE": "verify-full", **env}


def refusal(settings: ServiceSettings) -> str:
    with pytest.raises(SystemExit) as refused:
        check_settings(settings)
    return str(refused.value)


# ---- an explicit environment and strong secrets --------------------------------------------


def test_without_environment_a_service_is_in_production(monkeypatch) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    assert ServiceSettings().environment == "production"
    assert not ServiceSettings().development
    assert "refusing to start" in refusal(ServiceSettings())


@pytest.mark.parametrize("secret", [
    "replace-with-a-long-random-secret",             # deploy/k8s/secret.yaml
    "compose-demo-person-id-secret",                 # deploy/compose
    "dev-only-person-id-secret-change-me",           # the built-in development value
    "an-example-secret-that-is-long-enough-12345",   # a placeholder word
    "short-but-random-Zq8",                          # too short
    "a" * 40,                                        # long, no entropy
    "abababababababababababababababababababab",      # 40 characters, 2 symbols
])
def test_weak_or_placeholder_person_id_secrets_are_refused_in_production(secret) -> None:
    assert secret_weakness(secret) is not None
    said = refusal(ServiceSettings(**production(PERSON_ID_SECRET=secret)))  # type: ignore[arg-type]  # fields by name, validated by pydantic
    assert "PERSON_ID_SECRET" in said
    assert secret not in said  # never echoed


def test_a_generated_secret_passes_and_production_with_everything_set_starts() -> None:
    assert secret_weakness(secrets.token_urlsafe(32)) is None
    assert secret_weakness(STRONG) is None
    table = check_settings(ServiceSettings(**production()))  # type: ignore[arg-type]  # fields by name, validated by pydantic
    assert not table.open


def test_a_malformed_data_key_is_refused_even_in_development() -> None:
    said = refusal(ServiceSettings(ENVIRONMENT="development", DATA_ENCRYPTION_KEY="not-a-key"))  # type: ignore[call-arg]  # by alias, as the environment sets it
    assert "DATA_ENCRYPTION_KEY" in said and "not-a-key" not in said
    said = refusal(ServiceSettings(ENVIRONMENT="development",  # type: ignore[call-arg]  # by alias, as above
                                   DATA_ENCRYPTION_PREVIOUS_KEYS=f"{DEV_DATA_KEY},short"))
    assert "DATA_ENCRYPTION_PREVIOUS_KEYS entry 2" in said


def test_the_k8s_and_compose_placeholder_data_keys_are_refused_in_production() -> None:
    said = refusal(ServiceSettings(**production(DATA_ENCRYPTION_KEY=DEV_DATA_KEY)))  # type: ignore[arg-type]  # fields by name, validated by pydantic
    assert "DATA_ENCRYPTION_KEY is the development default" in said
    said = refusal(ServiceSettings(**production(DATA_ENCRYPTION_KEY="replace-with-a-fernet-key")))  # type: ignore[arg-type]  # fields by name, validated by pydantic
    assert "DATA_ENCRYPTION_KEY" in said


# ---- transport ---------------------------------------------------------------------------------


def test_production_refuses_plaintext_kafka_and_unverified_postgres_naming_both() -> None:
    said = refusal(ServiceSettings(**production(  # type: ignore[arg-type]  # fields by name, validated by pydantic
        KAFKA_SECURITY_PROTOCOL="PLAINTEXT", DATABASE_SSLMODE="require")))
    assert "KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in said
    assert "sslmode is require" in said
    assert "ALLOW_INSECURE_TRANSPORT" in said


def test_verify_full_may_come_from_the_dsn_and_the_migration_dsn_is_checked_too() -> None:
    ok = ServiceSettings(**production())  # type: ignore[arg-type]  # fields by name, validated by pydantic
    ok = ok.model_copy(update={"database_sslmode": None,
                               "database_url": "postgresql://a@db/x?sslmode=verify-full"})
    assert ok.transport_problems() == []
    bad = ok.model_copy(update={"migration_database_url": "postgresql://m@db/x?sslmode=prefer"})
    assert ["MIGRATION_DATABASE_URL" in p for p in bad.transport_problems()] == [True]


def test_allow_insecure_transport_waives_only_the_transport_checks(caplog) -> None:
    waived = production(KAFKA_SECURITY_PROTOCOL="PLAINTEXT", DATABASE_SSLMODE="disable",
                        ALLOW_INSECURE_TRANSPORT="true")
    with caplog.at_level("WARNING"):
        check_settings(ServiceSettings(**waived))  # type: ignore[arg-type]  # fields by name, validated by pydantic
    assert "ALLOW_INSECURE_TRANSPORT" in caplog.text
    said = refusal(ServiceSettings(**{**waived, "PERSON_ID_SECRET": "x" * 40}))  # type: ignore[arg-type]  # fields by name, validated by pydantic
    assert "PERSON_ID_SECRET" in said and "KAFKA" not in said


# ---- catalogues fail closed ----------------------------------------------------------------------


def test_production_refuses_a_missing_catalogue_dir_or_an_agency_without_a_catalogue(tmp_path) -> None:
    said = refusal(EnrollmentSettings(**production(), catalogue_dir=str(tmp_path / "no")))  # type: ignore[arg-type]  # fields by name, validated by pydantic
    assert "is not a directory" in said
    for agency in ("city-a", "suqian", "baoshan"):
        (tmp_path / f"{agency}.json").write_text(json.dumps({"agency": agency}))
    said = refusal(EnrollmentSettings(**production(), catalogue_dir=str(tmp_path)))  # type: ignore[arg-type]  # fields by name, validated by pydantic
    assert "no catalogue for beijing" in said
    (tmp_path / "beijing.json").write_text(json.dumps({"agency": "beijing"}))
    check_settings(EnrollmentSettings(**production(), catalogue_dir=str(tmp_path)))  # type: ignore[arg-type]  # fields by name, validated by pydantic


# ---- the person-id secret's fingerprint ------------------------------------------------------


def test_the_fingerprint_is_an_hmac_of_a_label_and_never_contains_the_secret() -> None:
    fingerprint = secret_fingerprint(STRONG)
    assert len(fingerprint) == 64 and STRONG not in fingerprint
    assert fingerprint == secret_fingerprint(STRONG) != secret_fingerprint(STRONG + "x")


# ---- lookups: granted per token, rate-limited -----------------------------------------------


def test_a_lookup_is_granted_per_token_and_only_to_agency_and_auditor_tokens() -> None:
    raw = orjson.dumps({
        auth.hash_token("a"): {"role": "agency", "agency": "suqian", "lookup": True},
        auth.hash_token("b"): {"role": "agency", "agency": "suqian"},
    }).decode()
    table = auth.token_table(raw, AGENCIES, development=False)
    granted, plain = table.resolve("Bearer a"), table.resolve("Bearer b")
    assert granted is not None and granted.lookup and plain is not None and not plain.lookup
    assert granted.token == auth.hash_token("a")[7:23]  # names the token, never holds it
    with pytest.raises(auth.TokenConfigError, match="lookup"):
        auth.token_table(orjson.dumps({auth.hash_token("c"): {"role": "auditor", "lookup": "yes"}}).decode(),
                         AGENCIES, development=False)


def test_the_rate_limiter_allows_n_a_minute_per_key_and_says_how_long_to_wait() -> None:
    now = [1000.0]
    limiter = auth.RateLimiter(3, clock=lambda: now[0])
    assert [limiter.allow("t") for _ in range(3)] == [None, None, None]
    assert limiter.allow("t") == pytest.approx(60.0)
    assert limiter.allow("other") is None  # per token
    now[0] += 30
    assert limiter.allow("t") == pytest.approx(30.0)
    now[0] += 30.001
    assert limiter.allow("t") is None


# ---- the HTTP host: bounded bodies, hostile JSON, /metrics, /openapi.json ---------------------


def client(*, protect_metrics: bool = False) -> httpx.AsyncClient:
    async def echo(request: Request) -> JSONResponse:
        """Echo the JSON body."""
        return JSONResponse({"body": await json_body(request)})

    routes: list[BaseRoute] = [Route("/echo", echo, methods=["POST"]), Route("/things/{ref:path}", echo)]
    table = auth.token_table(TOKENS, AGENCIES, development=False)
    app = http_app(None, routes, table, title="t", protect_metrics=protect_metrics,
                   described={"/echo": {"body": {"type": "object"}}})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                             headers={"authorization": "Bearer t-auditor"})


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,          # deep nesting (a RecursionError with json)
    b'{"a": ' + b"9" * 5000 + b"}",           # an integer of 5,000 digits
    b'{"a": 1e999}', b'{"a": NaN}', b"\xff\xfe", b"",
])
async def test_hostile_json_is_a_400_never_a_500(body) -> None:
    r = await client().post("/echo", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 413), r.text


async def test_a_body_over_16_kib_is_a_413_declared_or_streamed() -> None:
    big = b'{"a": "' + b"x" * 20_000 + b'"}'
    assert (await client().post("/echo", content=big)).status_code == 413

    async def chunks():  # no content-length: the limit counts what arrives
        for _ in range(40):
            yield b" " * 1000

    r = await client().post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert (await client().post("/echo", json={"a": 1})).json() == {"body": {"a": 1}}


async def test_metrics_need_a_token_when_protected_and_stay_open_otherwise() -> None:
    anonymous = {"authorization": ""}
    assert (await client().get("/metrics", headers=anonymous)).status_code == 200
    assert (await client(protect_metrics=True).get("/metrics", headers=anonymous)).status_code == 401
    assert (await client(protect_metrics=True).get("/metrics")).status_code == 200
    assert (await client(protect_metrics=True).get("/healthz", headers=anonymous)).status_code == 200


async def test_the_openapi_document_lists_every_route_with_its_parameters_and_body() -> None:
    document = (await client().get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/healthz", "/readyz", "/metrics", "/openapi.json", "/echo",
                                      "/things/{ref}"}
    assert "requestBody" in document["paths"]["/echo"]["post"]
    assert document["paths"]["/things/{ref}"]["get"]["parameters"][0]["name"] == "ref"
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert (await client().get("/openapi.json", headers={"authorization": ""})).status_code == 401


# ---- encryption at rest ----------------------------------------------------------------------


def test_a_dead_letter_is_sealed_with_the_current_key_and_names_its_key_id() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    value = b'{"data": {"trainee": {"national_id": "11010519491231002X", "name": "\xe5\xbc\xa0\xe4\xb8\x89"}}}'
    try:
        crypto.configure(crypto.Keyring.of([old]))
        out = Outbox(source="/s", dlq_topic="dlq")
        out.dead_letter(RawRecord("up", 0, 7, b"k", value), "schema_violation", "detail")
        sealed_old = out.dead[0][2]
        crypto.configure(crypto.Keyring.of([new, old]))  # rotated: new current, old readable
        out.dead_letter(RawRecord("up", 0, 8, b"k", value), "schema_violation", "detail")
        sealed_new = out.dead[1][2]
    finally:
        crypto.configure(None)
    for row, key in ((sealed_old, old), (sealed_new, new)):
        _topic, _key_bytes, _kind, sealed, headers = row
        assert b"11010519491231002X" not in sealed and "张三".encode() not in sealed
        names = dict(orjson.loads(headers))
        assert names[crypto.KEY_ID_HEADER] == crypto.key_id(key)
        assert {"error-code", "error-detail", "original-topic", "original-partition",
                "original-offset"} <= set(names)  # the contract's headers stay
        assert crypto.Keyring.of([new, old]).open(sealed) == value
    assert out.dead[0][1] is None  # dedupe identity unchanged by sealing (no key given)
    rotated = crypto.Keyring.of([new, old]).rotate(sealed_old[3])
    assert crypto.Keyring.of([new]).open(rotated) == value


def test_stored_values_are_opened_when_sealed_and_read_as_they_are_otherwise() -> None:
    try:
        crypto.configure(crypto.Keyring.of([DEV_DATA_KEY]))
        sealed = crypto.seal(b'{"id": "x"}')
        assert sealed.startswith(crypto.TOKEN_PREFIX)
        assert crypto.open_stored(sealed) == b'{"id": "x"}'
        assert crypto.open_stored(b'{"id": "x"}') == b'{"id": "x"}'  # written in clear before
    finally:
        crypto.configure(None)


# ---- deployment examples ---------------------------------------------------------------------


def test_compose_binds_to_localhost_and_has_no_default_secrets() -> None:
    text = (ROOT / "deploy/compose/docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert "compose-demo-person-id-secret" not in text and DEV_DATA_KEY not in text
    assert "${PERSON_ID_SECRET:?" in text and "${DATA_ENCRYPTION_KEY:?" in text


def _k8s(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy/k8s" / name).read_text()) if d]


@pytest.mark.parametrize("service", ["enrollment", "assessment", "subsidy"])
def test_k8s_pods_run_hardened_with_metrics_on_their_own_port(service) -> None:
    deployment = next(d for d in _k8s(f"{service}.yaml") if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert f"{service.upper()}_METRICS_PORT" in env
    assert f"{service.upper()}_MIGRATION_DATABASE_URL" in {
        e["name"] for e in pod["initContainers"][0]["env"]}


def test_k8s_network_policies_deny_by_default_and_admit_only_the_ingress_and_prometheus() -> None:
    policies = _k8s("networkpolicy.yaml")
    assert {p["kind"] for p in policies} == {"NetworkPolicy"}
    default = next(p for p in policies if p["metadata"]["name"] == "default-deny")
    assert default["spec"]["podSelector"] == {} and set(default["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "networkpolicy.yaml" in (ROOT / "deploy/k8s/kustomization.yaml").read_text()
    config = _k8s("config.yaml")[0]["data"]
    assert config["ENVIRONMENT"] == "production"
    assert config["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and config["DATABASE_SSLMODE"] == "verify-full"
