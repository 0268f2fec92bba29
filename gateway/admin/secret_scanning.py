"""``POST /admin/v1/secret-scanning/github`` (README "Leaked keys"): GitHub's secret-scanning
partner endpoint. GitHub holds no admin key, so the route is public to the admin key check and
its authentication is the signature instead: ``Github-Public-Key-Signature`` (base64 DER ECDSA
P-256 / SHA-256 over the raw body) by the key ``Github-Public-Key-Identifier`` names, among
``secret_scanning.github.public_keys``. Unsigned or badly signed: 401 ``invalid_signature``,
and the body is not even parsed. Not configured: 404, as if the endpoint did not exist.
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.handler import json_response
from gateway.admin.route import Route, header_param, returns
from gateway.admin.state import KEY_SERVICE, SERVICES, SIGNING_KEYS
from gateway.config import GithubScanningConfig
from gateway.errors import INVALID_SIGNATURE, NOT_FOUND, GatewayError
from gateway.keys.leaks import LeakedKeys, read_report
from gateway.keys.signature import is_signed
from gateway.services import Services

IDENTIFIER = "Github-Public-Key-Identifier"
SIGNATURE = "Github-Public-Key-Signature"
# RFC 9110 §11.6.1: a 401 names how to authenticate; this one is not Bearer
CHALLENGE = {"WWW-Authenticate": 'Signature realm="secret-scanning"'}


def configured(services: Services) -> GithubScanningConfig:
    github = services.config.secret_scanning.github
    if github is None:
        raise GatewayError(NOT_FOUND, "no such admin endpoint")  # as an unknown path answers
    return github


async def check_signature(request: web.Request, github: GithubScanningConfig, body: bytes) -> None:
    identifier, signature = request.headers.get(IDENTIFIER), request.headers.get(SIGNATURE)
    if not identifier or not signature:
        raise unsigned(request, f"the report needs {IDENTIFIER} and {SIGNATURE}")
    key = await request.app[SIGNING_KEYS].of(github).key(identifier)
    if key is None:
        raise unsigned(request, f"no public key is listed as {IDENTIFIER}")
    if not is_signed(key, signature, body):
        raise unsigned(request, f"{SIGNATURE} is not a signature of this body by that key")


def unsigned(request: web.Request, detail: str) -> GatewayError:
    request.app[SERVICES].metrics.refused_reports.inc()
    return GatewayError(INVALID_SIGNATURE, detail, headers=CHALLENGE)


async def github_report(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    github = configured(services)
    body = await request.read()
    await check_signature(request, github, body)
    leaks = LeakedKeys(services.store, request.app[KEY_SERVICE], services.hasher,
                       services.prefixes)
    labels = await leaks.report(read_report(body))
    for answer in labels:
        services.metrics.leaked_tokens.labels(answer["label"]).inc()
    return json_response(labels)


ROUTES = (
    Route("POST", "/admin/v1/secret-scanning/github", github_report,
          "Report leaked keys (GitHub secret scanning)",
          returns(200, "SecretScanningLabels"), body="SecretScanningReport",
          headers=(header_param(IDENTIFIER, "the key_identifier of the signing public key"),
                   header_param(SIGNATURE, "base64 DER ECDSA P-256 / SHA-256 signature of the "
                                "raw body")),
          errors=("400", "401", "404", "503"), operation_id="github_secret_scanning",
          public=True),
)
