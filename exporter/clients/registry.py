"""`mode: check`: ask the model's registry for the tag's manifest digest, never download.

The request is the one Ollama makes first in a pull: `GET {scheme}://HOST/v2/NAMESPACE/MODEL/
manifests/TAG` with `Accept: application/vnd.docker.distribution.manifest.v2+json`, host,
namespace and tag from the model name with Ollama's defaults (registry.ollama.ai, library,
latest) and `http` when the model is `insecure`. A 401 with a `Bearer` challenge is answered
the anonymous way (a token from the realm, then one retry), as for a public pull. Requests go
from the exporter, through `HTTPS_PROXY`/`HTTP_PROXY` when set (`NO_PROXY` honoured): an https
registry through a CONNECT tunnel that carries the exporter's User-Agent and the credentials of
the proxy URL; a proxy that refuses the tunnel makes an `unreachable` check that names it.

Whatever the registry answers becomes a `CheckResult`: garbage is a failed check, never an
exception. The digest is the `Docker-Content-Digest` header, which must match the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp
import msgspec
from yarl import URL

from exporter import USER_AGENT
from exporter.clients.body import read_up_to
from exporter.clients.problems import describe
from exporter.clients.transport import env_proxy_for_url
from exporter.ollama.names import parse_model_name
from exporter.state.holdings import CheckResult

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from exporter.config.types import ModelConfig, ServerConfig
    from exporter.state.pairs import PairState

log = logging.getLogger("exporter.registry")

MANIFEST_V2: Final = "application/vnd.docker.distribution.manifest.v2+json"
REQUEST_TIMEOUT: Final = 30.0
"""Seconds for one registry request (the manifest, or the token)."""
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
"""Distribution itself refuses manifests over 4 MiB."""
MAX_TOKEN_BYTES: Final = 1024 * 1024
_DIGEST: Final = re.compile(r"sha256:([0-9a-f]{64})")
_CHALLENGE_PARAM: Final = re.compile(r'(\w+)="([^"]*)"')
_DETAIL_LIMIT: Final = 300


@dataclass(frozen=True, slots=True)
class Reference:
    """Where a model's manifest lives: Ollama's `host/namespace/model:tag`, defaults applied."""

    host: str
    namespace: str
    model: str
    tag: str

    def manifest_url(self, *, insecure: bool) -> str:
        """The manifest URL; `insecure` means plain http, as in Ollama."""
        scheme = "http" if insecure else "https"
        path = "/".join(urllib.parse.quote(part, safe="") for part in (self.namespace, self.model))
        tag = urllib.parse.quote(self.tag, safe="")
        return f"{scheme}://{self.host}/v2/{path}/manifests/{tag}"


def parse_reference(name: str) -> Reference:
    """Where the manifest of model `name` lives (`parse_model_name`); raises ValueError."""
    parsed = parse_model_name(name)
    return Reference(parsed.host, parsed.namespace, parsed.model, parsed.tag)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one check ended: the result label, the digest when `ok`, and why otherwise."""

    result: CheckResult
    digest: str | None = None
    detail: str = ""
    rewritten: str | None = None
    """The digest of the manifest as Ollama before 0.19 rewrites it (see `ollama_rewrite`)."""


class _CheckFailedError(Exception):
    def __init__(self, result: CheckResult, detail: str) -> None:
        super().__init__(detail)
        self.outcome = Outcome(result, None, detail)


class _Token(msgspec.Struct, frozen=True):
    token: str = ""
    access_token: str = ""


class _Descriptor(msgspec.Struct, frozen=True):
    mediaType: str = ""  # noqa: N815 - the JSON key
    digest: str = ""
    size: int = 0
    # `from` is a Python keyword: Ollama's own manifests carry it for local layers only.


class _Manifest(msgspec.Struct, frozen=True):
    schemaVersion: int  # noqa: N815 - the JSON key
    mediaType: str = ""  # noqa: N815
    config: _Descriptor = _Descriptor()
    layers: list[_Descriptor] = []


_token_decoder: Final = msgspec.json.Decoder(_Token)
_manifest_decoder: Final = msgspec.json.Decoder(_Manifest)


def make_registry_session() -> aiohttp.ClientSession:
    """The session for registry requests: environment proxies on, no cookies kept."""
    return aiohttp.ClientSession(
        trust_env=True,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
    )


class Checker:
    """Runs the checks of `check`-mode pairs and records them in the pair's holding."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def check(self, server: ServerConfig, model: ModelConfig, pair: PairState) -> Outcome:
        """One check of `model`: ask the registry, record the result; never raises but cancel."""
        started = time.monotonic()
        try:
            reference = parse_reference(model.name)
            outcome = await self.fetch(reference, insecure=model.settings.insecure)
        except ValueError as exc:
            outcome = Outcome(CheckResult.ERROR, detail=str(exc))
        pair.holding.checked(outcome.result, outcome.digest, outcome.rewritten)
        fields: dict[str, object] = {
            "server": server.name,
            "model": model.name,
            "result": outcome.result.value,
            "duration_seconds": round(time.monotonic() - started, 3),
        }
        if outcome.result is CheckResult.OK:
            fields["digest"] = (outcome.digest or "")[:12]
            fields["update_available"] = pair.holding.update_available
            log.info("registry check", extra=fields)
        else:
            log.warning("registry check failed", extra={**fields, "detail": outcome.detail})
        return outcome

    async def fetch(self, reference: Reference, *, insecure: bool) -> Outcome:
        """The tag's manifest digest at its registry, or why it could not be had."""
        url = reference.manifest_url(insecure=insecure)
        try:
            status, headers, body = await self._get(
                url, {"Accept": MANIFEST_V2}, MAX_MANIFEST_BYTES
            )
            if status == 401:
                token = await self._token(headers.get("WWW-Authenticate", ""), reference)
                auth = {"Accept": MANIFEST_V2, "Authorization": f"Bearer {token}"}
                status, headers, body = await self._get(url, auth, MAX_MANIFEST_BYTES)
            return _manifest_outcome(status, headers, body)
        except _CheckFailedError as exc:
            return exc.outcome

    async def _token(self, challenge: str, reference: Reference) -> str:
        """An anonymous token for a `Bearer realm=...,service=...,scope=...` challenge."""
        scheme, _, params_text = challenge.partition(" ")
        if scheme.lower() != "bearer":
            detail = (
                f"HTTP 401 with a {scheme or 'missing'} challenge (only anonymous bearer tokens)"
            )
            raise _CheckFailedError(CheckResult.UNAUTHORIZED, detail)
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.get("realm", "")
        if urllib.parse.urlsplit(realm).scheme not in {"http", "https"}:
            raise _CheckFailedError(CheckResult.ERROR, f"bad token realm in challenge: {realm!r}")
        query = {"service": params.get("service", "")}
        query["scope"] = params.get(
            "scope", f"repository:{reference.namespace}/{reference.model}:pull"
        )
        status, _, body = await self._get(
            f"{realm}?{urllib.parse.urlencode(query)}", {}, MAX_TOKEN_BYTES
        )
        if status in {401, 403}:
            raise _CheckFailedError(CheckResult.UNAUTHORIZED, f"token request: HTTP {status}")
        if status != 200:
            raise _CheckFailedError(CheckResult.ERROR, f"token request: HTTP {status}")
        try:
            answer = _token_decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise _CheckFailedError(CheckResult.ERROR, f"token answer: {exc}") from None
        token = answer.token or answer.access_token
        if not token or any(not char.isprintable() or char.isspace() for char in token):
            raise _CheckFailedError(CheckResult.ERROR, "token answer has no usable token")
        return token

    async def _get(
        self, url: str, headers: dict[str, str], limit: int
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """GET `url`; (status, headers, the whole body); connection problems raise.

        A body over `limit` bytes is refused as an error check, read no further than that.

        The proxy is looked up here rather than by the session's `trust_env`, which would send
        the CONNECT request with aiohttp's User-Agent instead of the session's headers.
        """
        target = URL(url)
        proxy: URL | None = None
        proxy_auth: aiohttp.BasicAuth | None = None
        with contextlib.suppress(LookupError):  # no proxy for this URL, or NO_PROXY names it
            proxy, proxy_auth = await asyncio.to_thread(env_proxy_for_url, target)
        try:
            async with self._session.get(
                url, headers=headers, proxy=proxy, proxy_auth=proxy_auth
            ) as response:
                if response.content_length is not None and response.content_length > limit:
                    raise _CheckFailedError(CheckResult.ERROR, f"answer larger than {limit} bytes")
                body, more = await read_up_to(response.content, limit)
                if more:
                    raise _CheckFailedError(CheckResult.ERROR, f"answer larger than {limit} bytes")
                return response.status, response.headers, body
        except aiohttp.ClientHttpProxyError as exc:
            detail = _proxy_refusal(proxy, target, exc)
            raise _CheckFailedError(CheckResult.UNREACHABLE, detail) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _CheckFailedError(CheckResult.UNREACHABLE, _why(exc)) from None


_STATUS_RESULTS: Final = {
    401: CheckResult.UNAUTHORIZED,
    403: CheckResult.UNAUTHORIZED,
    404: CheckResult.NOT_FOUND,
}


def _manifest_outcome(status: int, headers: CIMultiDictProxy[str], body: bytes) -> Outcome:
    if status != 200:
        text = body[:_DETAIL_LIMIT].decode("utf-8", "replace").strip()
        return Outcome(
            _STATUS_RESULTS.get(status, CheckResult.ERROR), detail=f"HTTP {status}: {text}"
        )
    try:
        manifest = _manifest_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        return Outcome(CheckResult.ERROR, detail=f"the manifest is not a manifest: {exc}")
    computed = hashlib.sha256(body).hexdigest()
    problem = _digest_problem(headers.get("Docker-Content-Digest", ""), computed)
    if problem is not None:
        return Outcome(CheckResult.ERROR, detail=problem)
    rewritten = hashlib.sha256(ollama_rewrite(manifest)).hexdigest()
    return Outcome(CheckResult.OK, digest=computed, rewritten=rewritten)


def ollama_rewrite(manifest: _Manifest) -> bytes:
    """The manifest as Ollama before 0.19 stores it: decoded, then `json.Marshal`led again.

    Those releases write that re-encoding (compact, their struct's field order) instead of the
    registry's bytes, so `/api/tags` reports its digest; a held copy at either digest is current.
    """
    doc = {
        "schemaVersion": manifest.schemaVersion,
        "mediaType": manifest.mediaType,
        "config": _descriptor(manifest.config),
        "layers": [_descriptor(layer) for layer in manifest.layers],
    }
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    return text.translate(_GO_ESCAPES).encode()


def _descriptor(descriptor: _Descriptor) -> dict[str, object]:
    return {"mediaType": descriptor.mediaType, "digest": descriptor.digest, "size": descriptor.size}


_GO_ESCAPES: Final = str.maketrans(
    {"&": "\\u0026", "<": "\\u003c", ">": "\\u003e", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _digest_problem(header: str, computed: str) -> str | None:
    """Why the `Docker-Content-Digest` header is wrong for the body (None: absent or right)."""
    if not header:
        return None
    match = _DIGEST.fullmatch(header.strip().lower())
    if match is None:
        return f"bad Docker-Content-Digest {header[:80]!r}"
    if match.group(1) != computed:
        return "Docker-Content-Digest does not match the body"
    return None


def _proxy_refusal(proxy: URL | None, target: URL, exc: aiohttp.ClientHttpProxyError) -> str:
    """Which proxy refused the tunnel to where, and its answer; never the proxy's password.

    `env_proxy_for_url` has stripped the credentials off the proxy URL already.
    """
    host = f"[{target.host}]" if target.host and ":" in target.host else target.host
    named = "the proxy" if proxy is None else f"proxy {proxy.with_user(None)}"
    text = f"{named} refused CONNECT {host}:{target.port}: HTTP {exc.status} {exc.message}"
    return text[:_DETAIL_LIMIT]


def _why(exc: BaseException) -> str:
    return describe(exc, timeout=REQUEST_TIMEOUT, limit=_DETAIL_LIMIT)
