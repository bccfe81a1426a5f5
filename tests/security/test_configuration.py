"""Security settings turn into the right client options, token tables and refusals (no I/O)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from shared.runtime import auth, db
from shared.runtime.service import check_settings, database_ssl, http_app, kafka_security
from shared.runtime.settings import DEV_PERSON_ID_SECRET, ServiceSettings
from services.enrollment.config import DEV_DATA_KEY, EnrollmentSettings

pytestmark = pytest.mark.security

CA = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
AGENCIES = ("city-a", "suqian", "baoshan", "beijing")


def settings(**env: str) -> ServiceSettings:
    return ServiceSettings(**env)  # type: ignore[arg-type]  # aliases by name


def test_plaintext_kafka_needs_no_extra_client_options() -> None:
    assert kafka_security(settings()) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_kafka_gives_every_client_the_mechanism_credentials_and_a_verifying_context() -> None:
    if not CA.exists():
        pytest.skip("no system CA bundle to build a context from")
    options = kafka_security(settings(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="subsidy", KAFKA_SASL_PASSWORD="s3cret", KAFKA_SSL_CAFILE=str(CA)))
    context = options.pop("ssl_context")
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "subsidy", "sasl_plain_password": "s3cret"}
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_ssl_kafka_without_sasl_carries_a_context_and_no_credentials() -> None:
    options = kafka_security(settings(KAFKA_SECURITY_PROTOCOL="SSL"))
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"


def test_sasl_without_credentials_refuses_to_start() -> None:
    with pytest.raises(SystemExit, match="KAFKA_SASL_USERNAME"):
        kafka_security(settings(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT"))


def test_an_unknown_kafka_protocol_is_a_settings_error() -> None:
    with pytest.raises(ValueError):
        settings(KAFKA_SECURITY_PROTOCOL="TLS")


def test_the_kafka_password_never_shows_in_the_settings_repr() -> None:
    assert "s3cret" not in repr(settings(KAFKA_SASL_PASSWORD="s3cret"))


def test_postgres_tls_is_left_to_the_dsn_unless_a_sslmode_is_set() -> None:
    assert database_ssl(settings()) is None
    assert db.connect_kwargs(None) == {}
    assert database_ssl(settings(DATABASE_SSLMODE="require")) == "require"
    assert db.connect_kwargs("require") == {"ssl": "require"}


def test_postgres_verify_full_with_a_ca_checks_chain_and_host_and_verify_ca_the_chain_only() -> None:
    if not CA.exists():
        pytest.skip("no system CA bundle to build a context from")
    full = database_ssl(settings(DATABASE_SSLMODE="verify-full", DATABASE_SSLROOTCERT=str(CA)))
    chain = database_ssl(settings(DATABASE_SSLMODE="verify-ca", DATABASE_SSLROOTCERT=str(CA)))
    assert isinstance(full, ssl.SSLContext) and full.check_hostname
    assert full.verify_mode is ssl.CERT_REQUIRED
    assert isinstance(chain, ssl.SSLContext) and not chain.check_hostname
    assert chain.verify_mode is ssl.CERT_REQUIRED


def test_an_unknown_sslmode_is_a_settings_error() -> None:
    with pytest.raises(ValueError):
        settings(DATABASE_SSLMODE="sometimes")


def test_development_defaults_are_each_named_outside_development() -> None:
    found = EnrollmentSettings(ENVIRONMENT="production")  # type: ignore[call-arg]  # by alias, as the environment sets it
    assert found.person_id_secret == DEV_PERSON_ID_SECRET and found.data_key == DEV_DATA_KEY
    with pytest.raises(SystemExit) as refused:
        check_settings(found)
    message = str(refused.value)
    assert all(s in message for s in ("PERSON_ID_SECRET", "DATA_ENCRYPTION_KEY", "API_TOKENS"))


def test_development_without_tokens_runs_open_with_a_loud_warning(caplog) -> None:
    with caplog.at_level("WARNING"):
        table = check_settings(settings(ENVIRONMENT="development"))
    assert table.open
    assert "OPEN" in caplog.text


# ---- token tables ------------------------------------------------------------------------------


def table_json(**entries: dict[str, str]) -> str:
    return orjson.dumps({auth.hash_token(token): entry for token, entry in entries.items()}).decode()


def test_a_token_is_stored_as_its_sha256() -> None:
    assert auth.hash_token("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_the_cli_prints_the_stored_form_of_a_token(capsys) -> None:
    assert auth.main(["hash-token", "abc"]) == 0
    assert capsys.readouterr().out.strip() == auth.hash_token("abc")


def test_the_cli_makes_a_fresh_token_with_an_entry_that_authenticates_it(capsys) -> None:
    assert auth.main(["new-token", "--agency", "suqian"]) == 0
    lines = capsys.readouterr().out.splitlines()
    token = lines[0].rsplit(" ", 1)[1]
    entry = lines[1].split(": ", 1)[1]
    table = auth.token_table(entry, AGENCIES, development=False)
    assert table.resolve(f"Bearer {token}") == auth.Principal("agency", "suqian")


def test_tokens_are_read_inline_or_from_a_file(tmp_path) -> None:
    raw = table_json(t1={"role": "agency", "agency": "baoshan"}, t2={"role": "auditor"})
    path = tmp_path / "tokens.json"
    path.write_text(raw)
    for source in (raw, str(path)):
        table = auth.token_table(source, AGENCIES, development=False)
        assert table.resolve("Bearer t1") == auth.Principal("agency", "baoshan")
        assert table.resolve("bearer t2") == auth.Principal("auditor")
        assert table.resolve("Bearer t3") is None and table.resolve(None) is None
        assert table.resolve("Basic t1") is None


@pytest.mark.parametrize(("raw", "says"), [
    ('{"sha256:abc": {"role": "auditor"}}', "store hashes"),
    ("[]", "JSON object"),
    ("{not json", "not valid JSON"),
    ("/nonexistent/tokens.json", "cannot be read"),
    (table_json(t={"role": "admin"}), "role must be one of"),
    (table_json(t={"role": "agency"}), "needs an agency"),
    (table_json(t={"role": "agency", "agency": "atlantis"}), "needs an agency"),
    (table_json(t={"role": "auditor", "agency": "suqian"}), "names no agency"),
])
def test_a_malformed_token_table_is_refused_with_a_reason(raw, says) -> None:
    with pytest.raises(auth.TokenConfigError, match=says):
        auth.token_table(raw, AGENCIES, development=True)


def test_an_empty_token_table_is_open_in_development_and_refused_elsewhere() -> None:
    assert auth.token_table("", AGENCIES, development=True).open
    with pytest.raises(auth.TokenConfigError):
        auth.token_table("  ", AGENCIES, development=False)


# ---- the HTTP host in-process --------------------------------------------------------------------


def app_with(raw: str) -> httpx.AsyncClient:
    async def agency_data(request: Request) -> JSONResponse:
        auth.require_agency(request, request.path_params["agency"])
        return JSONResponse({"ok": True})

    async def audit(request: Request) -> JSONResponse:
        auth.require_auditor(request)
        return JSONResponse({"ok": True})

    async def public(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["id"]})

    routes: list[BaseRoute] = [Route("/agencies/{agency}/x", agency_data), Route("/audit", audit),
                               Route("/certificates/{id}", public)]
    app = http_app(None, routes, auth.token_table(raw, AGENCIES, development=True))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_the_host_answers_401_403_and_200_by_token_and_agency() -> None:
    client = app_with(table_json(s={"role": "agency", "agency": "suqian"}, a={"role": "auditor"}))
    suqian, auditor = {"authorization": "Bearer s"}, {"authorization": "Bearer a"}
    assert (await client.get("/agencies/suqian/x")).status_code == 401
    assert (await client.get("/agencies/suqian/x", headers=suqian)).status_code == 200
    assert (await client.get("/agencies/baoshan/x", headers=suqian)).status_code == 403
    assert (await client.get("/agencies/baoshan/x", headers=auditor)).status_code == 200
    assert (await client.get("/audit", headers=suqian)).status_code == 403
    assert (await client.get("/audit", headers=auditor)).status_code == 200
    assert (await client.get("/certificates/c1")).status_code == 200
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/nowhere")).status_code == 401  # unknown paths reveal nothing either


@pytest.mark.parametrize("url", ["/certificates/a%00b", "/certificates/a%0Ab", "/audit?x=%00",
                                 "/certificates/" + "x" * 5000])
async def test_urls_with_control_characters_or_kilobytes_are_refused_before_any_route(url) -> None:
    assert (await app_with("").get(url)).status_code == 400


def test_a_reviewer_token_reads_its_agency_and_reviews_only_its_holds_and_carries_its_name(capsys) -> None:
    assert auth.main(["new-token", "--agency", "suqian", "--reviewer", "--name", "suqian-clerk-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    token, entry = lines[0].rsplit(" ", 1)[1], lines[1].split(": ", 1)[1]
    table = auth.token_table(entry, AGENCIES, development=False)
    reviewer = table.resolve(f"Bearer {token}")
    assert reviewer == auth.Principal("reviewer", "suqian") and reviewer.name == "suqian-clerk-1"
    assert reviewer.sees("suqian") and not reviewer.sees("beijing")
    assert reviewer.may_review("suqian") and not reviewer.may_review("beijing")
    others = auth.token_table(table_json(a={"role": "agency", "agency": "suqian"},
                                         b={"role": "auditor", "name": "audit-office"}),
                              AGENCIES, development=False)
    staff, auditor = others.resolve("Bearer a"), others.resolve("Bearer b")
    assert staff is not None and auditor is not None
    assert not staff.may_review("suqian") and not auditor.may_review("suqian")  # read only
    assert auditor.name == "audit-office" and staff.name.startswith("token-")


@pytest.mark.parametrize("entry", [
    {"role": "reviewer"},  # a reviewer needs an agency
    {"role": "reviewer", "agency": "atlantis"},
    {"role": "reviewer", "agency": "suqian", "name": "张三"},  # names carry no personal data
    {"role": "agency", "agency": "suqian", "name": ""},
])
def test_a_bad_reviewer_entry_refuses_to_start(entry: dict[str, Any]) -> None:
    with pytest.raises(auth.TokenConfigError):
        auth.token_table(table_json(t=entry), AGENCIES, development=False)
