"""Signed webhooks against a local receiver (real client, real sockets), and the shared HTTP mapping."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.http import _DeliveryClient, make_client, raise_for_delivery
from automation.channels.webhook import (
    NEW_SECRET_COMMAND,
    WebhookChannel,
    message_id,
    secret_key,
    sign,
    verify,
)
from automation.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from automation.messages.store import RenderedMessage
from tests.http_server import LocalServer, Reply, closed_port, serve

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another key, also 32 bytes long.").decode()
BODY = '{"event": "welcome", "customer": {"id": "c1", "name": "Zoë"}, "amount": 12.5}'


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serve(secret=SECRET, dedupe_header="Idempotency-Key") as srv:
        yield srv


def hook(url: str, key: str = "pb:c1:hook:1", body: str | None = BODY) -> Delivery:
    rendered = RenderedMessage("webhook", "hook", body=body, json=None if body is None else json.loads(body))
    return Delivery(
        message_id=7, idempotency_key=key, channel="webhook", customer_id="c1", rendered=rendered, url=url
    )


async def send(*deliveries: Delivery, secret: str = SECRET, timeout: float = 5.0) -> list[DeliveryResult]:
    async with make_client(timeout=timeout) as client:
        channel = WebhookChannel(client, secret=secret)
        return [await channel.send(d) for d in deliveries]


def send_error(delivery: Delivery, timeout: float = 5.0) -> BaseException:
    with pytest.raises((TransientDeliveryError, PermanentDeliveryError)) as info:
        asyncio.run(send(delivery, timeout=timeout))
    return info.value


# ------------------------------------------------------------------------------------------ signing


def test_request_is_signed_and_verifies(server: LocalServer) -> None:
    [result] = asyncio.run(send(hook(server.url + "/hooks")))

    [request] = server.requests
    assert request.method == "POST" and request.path == "/hooks"
    assert request.body == BODY.encode("utf-8")  # byte for byte what was signed
    assert request.header("Content-Type") == "application/json"
    assert request.header("Idempotency-Key") == "pb:c1:hook:1"
    assert request.header("webhook-id") == message_id("pb:c1:hook:1")
    assert abs(int(request.header("webhook-timestamp") or 0) - time.time()) < 60
    assert (request.header("webhook-signature") or "").startswith("v1,")
    assert request.signature_ok is True  # the server's own implementation of the spec agrees
    assert verify(SECRET, request.headers, request.body)
    assert verify(SECRET, {k.upper(): v for k, v in request.headers.items()}, request.body.decode())
    assert result.provider_id == message_id("pb:c1:hook:1")


def test_tampered_body_wrong_secret_and_stale_timestamps_do_not_verify(server: LocalServer) -> None:
    asyncio.run(send(hook(server.url)))
    [request] = server.requests
    stamp = int(request.headers["webhook-timestamp"])

    assert verify(SECRET, request.headers, request.body, now=stamp + 300)
    assert not verify(SECRET, request.headers, request.body.replace(b"12.5", b"99.5"))
    assert not verify(SECRET, request.headers, request.body + b" ")
    assert not verify(OTHER_SECRET, request.headers, request.body)
    assert not verify(SECRET, request.headers, request.body, now=stamp + 301)  # too old
    assert not verify(SECRET, request.headers, request.body, now=stamp - 301)  # from the future
    assert not verify(SECRET, request.headers, request.body, tolerance=10, now=stamp + 11)
    other_id = {**request.headers, "webhook-id": "msg_other"}
    assert not verify(SECRET, other_id, request.body)
    moved = {**request.headers, "webhook-timestamp": str(stamp + 1)}
    assert not verify(SECRET, moved, request.body, now=stamp)
    assert not verify(SECRET, {}, request.body)


def test_verify_accepts_one_valid_signature_among_several() -> None:
    body = b'{"a":1}'
    now = int(time.time())
    good = sign(SECRET, "msg_1", now, body)
    stale = sign(OTHER_SECRET, "msg_1", now, body)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": f"{stale} v2,xyz {good}",
    }
    assert verify(SECRET, headers, body)
    headers["webhook-signature"] = f"{stale} v2,{good[3:]}"  # right value, wrong version
    assert not verify(SECRET, headers, body)


def test_whsec_secrets_sign_with_the_decoded_key() -> None:
    raw = b"\x00\xffbinary key bytes, 32 long."
    whsec = "whsec_" + base64.b64encode(raw).decode()
    assert secret_key(whsec) == raw
    assert sign(whsec, "msg_1", 1, b"x") == sign(raw, "msg_1", 1, b"x")
    assert sign(whsec, "msg_1", 1, b"x") != sign(whsec[6:].encode(), "msg_1", 1, b"x")
    with pytest.raises(ConfigError, match="not standard base64"):
        secret_key("whsec_not*base64")
    with pytest.raises(ConfigError, match="empty"):
        secret_key("")


def test_a_plain_string_secret_is_refused_and_verifies_nothing(server: LocalServer) -> None:
    with pytest.raises(ConfigError, match="does not start with whsec_"):
        asyncio.run(send(hook(server.url), secret="plain-secret-ü-long-enough-for-any-rule"))
    assert server.requests == []
    asyncio.run(send(hook(server.url)))
    [request] = server.requests
    assert not verify("plain-secret-ü-long-enough-for-any-rule", request.headers, request.body)


def test_a_receiver_that_checks_signatures_rejects_a_wrong_secret_permanently() -> None:
    with serve(secret=SECRET, reject_bad_signatures=True) as srv:
        with pytest.raises(PermanentDeliveryError, match="HTTP 401"):
            asyncio.run(send(hook(srv.url), secret=OTHER_SECRET))
        asyncio.run(send(hook(srv.url)))
        assert [r.outcome for r in srv.requests] == ["bad-signature", "ok"]


# ------------------------------------------------- the official Standard Webhooks library as receiver


def test_the_standard_webhooks_library_verifies_what_both_client_paths_send(server: LocalServer) -> None:
    asyncio.run(send(hook(server.url + "/fast", key="k-fast")))
    plain = httpx.AsyncClient(timeout=5)  # no aiohttp fast path: the httpx request path
    answered = asyncio.run(send_with(plain, hook(server.url + "/httpx", key="k-httpx")))
    assert isinstance(answered, DeliveryResult)

    fast, slow = server.requests
    assert fast.path == "/fast" and slow.path == "/httpx"
    for request in (fast, slow):
        assert Webhook(SECRET).verify(request.body, request.headers) == json.loads(BODY)
        assert Webhook(SECRET).verify(request.body.decode(), request.headers, json_parse=False) is None


def test_the_standard_webhooks_library_rejects_a_tampered_request(server: LocalServer) -> None:
    asyncio.run(send(hook(server.url)))
    [request] = server.requests
    receiver = Webhook(SECRET)
    receiver.verify(request.body, request.headers)  # the untouched request is fine
    for body, headers in (
        (request.body.replace(b"12.5", b"99.5"), request.headers),
        (request.body + b" ", request.headers),
        (request.body, {**request.headers, "webhook-id": "msg_other"}),
    ):
        with pytest.raises(WebhookVerificationError):
            receiver.verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(request.body, request.headers)


def test_a_secret_made_by_the_documented_command_and_its_unpadded_form_verify_with_the_library(
    server: LocalServer,
) -> None:
    command = NEW_SECRET_COMMAND.replace("python", shlex.quote(sys.executable), 1)
    made = subprocess.run(command, shell=True, capture_output=True, text=True, check=True).stdout.strip()
    assert made.startswith("whsec_") and len(secret_key(made)) == 32
    unpadded = made.rstrip("=")
    assert unpadded != made and secret_key(unpadded) == secret_key(made)  # 32 bytes: one "=" of padding
    for key, secret in enumerate((made, unpadded)):
        asyncio.run(send(hook(server.url, key=f"k{key}"), secret=secret))
        request = server.requests[-1]
        assert Webhook(secret).verify(request.body, request.headers) == json.loads(BODY)
        assert verify(secret, request.headers, request.body)


# ------------------------------------------------------------------------------ ids and idempotency


def test_retries_carry_the_same_id_and_key_and_the_receiver_processes_once(server: LocalServer) -> None:
    server.fail_next(status=503)

    async def attempts() -> list[DeliveryResult]:
        async with make_client(timeout=5) as client:
            channel = WebhookChannel(client, secret=SECRET)
            with pytest.raises(TransientDeliveryError):
                await channel.send(hook(server.url))
            return [await channel.send(hook(server.url)), await channel.send(hook(server.url))]

    first, second = asyncio.run(attempts())
    requests = server.requests
    assert [r.outcome for r in requests] == ["failed:503", "ok", "duplicate"]
    assert {r.header("webhook-id") for r in requests} == {message_id("pb:c1:hook:1")}
    assert {r.header("Idempotency-Key") for r in requests} == {"pb:c1:hook:1"}
    assert all(r.signature_ok for r in requests)
    assert server.unique_deliveries == 1
    assert first == second


def test_different_keys_get_different_ids(server: LocalServer) -> None:
    asyncio.run(send(hook(server.url, key="a"), hook(server.url, key="b")))
    ids = [r.header("webhook-id") for r in server.requests]
    assert ids == [message_id("a"), message_id("b")]
    assert ids[0] != ids[1]
    assert server.unique_deliveries == 2


def test_the_receivers_id_becomes_the_provider_id(server: LocalServer) -> None:
    server.route("/crm", Reply(201, json={"id": "evt_42"}))
    server.route("/num", Reply(200, json={"id": 42}))
    server.route("/empty", Reply(204))
    results = asyncio.run(send(hook(server.url + "/crm"), hook(server.url + "/num", key="k2")))
    assert [r.provider_id for r in results] == ["evt_42", "42"]
    [empty] = asyncio.run(send(hook(server.url + "/empty", key="k3")))
    assert empty.provider_id == message_id("k3")


def test_the_receivers_id_is_read_however_its_json_spells_it(server: LocalServer) -> None:
    # the key escaped, the id nested (not the receiver's id), "id" only in a value, and not JSON at all
    server.route("/escaped", Reply(200, body=b'{"\\u0069d": "evt_esc"}'))
    server.route("/nested", Reply(200, json={"data": {"id": "inner"}}))
    server.route("/value", Reply(200, json={"ok": "id"}))
    server.route("/spaced", Reply(200, body=b'{ "ok" : true , "id" : 7 }'))
    server.route("/text", Reply(200, body=b"accepted"))
    paths = ["/escaped", "/nested", "/value", "/spaced", "/text"]
    results = asyncio.run(send(*(hook(server.url + p, key=f"k{p}") for p in paths)))
    assert [r.provider_id for r in results] == [
        "evt_esc",
        message_id("k/nested"),
        message_id("k/value"),
        "7",
        message_id("k/text"),
    ]


def test_json_only_rendering_is_serialised_and_signed(server: LocalServer) -> None:
    rendered = RenderedMessage("webhook", "hook", json={"b": 1, "name": "Zoë"})
    delivery = Delivery(
        message_id=1,
        idempotency_key="k",
        channel="webhook",
        customer_id="c1",
        rendered=rendered,
        url=server.url,
    )
    asyncio.run(send(delivery))
    [request] = server.requests
    assert request.json() == {"b": 1, "name": "Zoë"}
    assert request.signature_ok is True


def test_missing_url_or_body_is_permanent_and_sends_nothing(server: LocalServer) -> None:
    no_url = Delivery(
        message_id=1,
        idempotency_key="k",
        channel="webhook",
        customer_id="c1",
        rendered=RenderedMessage("webhook", "hook", body=BODY),
    )
    with pytest.raises(PermanentDeliveryError, match="no webhook URL"):
        asyncio.run(send(no_url))
    with pytest.raises(PermanentDeliveryError, match="no body"):
        asyncio.run(send(hook(server.url, body=None)))
    assert server.requests == []


def test_an_invalid_whsec_secret_is_a_config_error() -> None:
    async def build() -> None:
        async with make_client() as client:
            WebhookChannel(client, secret="whsec_%%%")

    with pytest.raises(ConfigError):
        asyncio.run(build())


# ---------------------------------------------------------------------------------- failure modes


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(500, None, None), (502, None, None), (429, 7, 7.0), (503, "120", 120.0), (425, None, None)],
)
def test_transient_statuses(
    server: LocalServer, status: int, retry_after: int | str | None, expected: float | None
) -> None:
    server.fail_next(status=status, retry_after=retry_after)
    error = send_error(hook(server.url))
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == expected
    assert f"HTTP {status}" in str(error)


@pytest.mark.parametrize("status", [400, 404, 410, 422])
def test_permanent_statuses_name_the_status(server: LocalServer, status: int) -> None:
    server.fail_next(status=status, body=b'{"error": "invalid payload for ann.lee@example.com"}')
    error = send_error(hook(server.url))
    assert isinstance(error, PermanentDeliveryError)
    assert f"HTTP {status}" in str(error)
    assert "invalid payload" in str(error)
    assert "ann.lee@example.com" not in str(error)
    assert "a***@example.com" in str(error)


def test_error_messages_do_not_quote_the_url(server: LocalServer) -> None:
    server.fail_next(status=400)
    error = send_error(hook(server.url + "/hooks?token=SECRET-TOKEN"))
    assert "SECRET-TOKEN" not in str(error)
    assert "127.0.0.1" in str(error)


def test_a_long_error_body_is_cut(server: LocalServer) -> None:
    server.fail_next(status=422, body=b"x" * 5000)
    error = send_error(hook(server.url))
    assert 200 <= str(error).count("x") <= 210


def test_a_hang_past_the_timeout_is_transient_and_the_retry_is_deduplicated(server: LocalServer) -> None:
    server.hang_next(seconds=1.0)
    error = send_error(hook(server.url), timeout=0.3)
    assert isinstance(error, TransientDeliveryError)
    assert "timed out" in str(error)
    server.wait_settled()  # the slow receiver processes the request after all
    asyncio.run(send(hook(server.url)))
    assert [r.outcome for r in server.requests] == ["ok", "duplicate"]
    assert server.requests[0].hung
    assert server.unique_deliveries == 1


def test_a_dropped_connection_is_transient(server: LocalServer) -> None:
    server.drop_next()
    error = send_error(hook(server.url))
    assert isinstance(error, TransientDeliveryError)
    assert "closed the connection" in str(error)
    assert server.requests[0].outcome == "drop"
    asyncio.run(send(hook(server.url)))  # and the next attempt goes through
    assert server.unique_deliveries == 1


def test_a_refused_connection_is_transient() -> None:
    error = send_error(hook(f"http://127.0.0.1:{closed_port()}/hooks"))
    assert isinstance(error, TransientDeliveryError)
    assert "could not connect" in str(error)


def test_an_unsupported_scheme_is_permanent() -> None:
    error = send_error(hook("ftp://127.0.0.1/hooks"))
    assert isinstance(error, PermanentDeliveryError)


def test_many_concurrent_webhooks_share_a_small_pool(server: LocalServer) -> None:
    async def burst() -> list[DeliveryResult]:
        async with make_client(timeout=5, max_connections=3) as client:
            channel = WebhookChannel(client, secret=SECRET)
            return await asyncio.gather(*(channel.send(hook(server.url, key=f"k{i}")) for i in range(30)))

    results = asyncio.run(burst())
    assert len({r.provider_id for r in results}) == 30
    assert server.unique_deliveries == 30
    assert all(r.signature_ok for r in server.requests)


# ------------------------------------------------------------------------------ shared HTTP helpers


def test_make_client_uses_the_aiohttp_transport() -> None:
    from httpx_aiohttp import AiohttpTransport

    async def check() -> None:
        async with make_client(timeout=2.5, max_connections=4) as client:
            assert isinstance(client._transport, AiohttpTransport)
            assert client._transport.limits.max_connections == 4
            assert client.timeout.read == 2.5
            assert client.follow_redirects is False

    asyncio.run(check())


def response(status: int, headers: dict[str, str] | None = None, text: str = "") -> httpx.Response:
    request = httpx.Request("POST", "https://hooks.example.com/x?token=t")
    return httpx.Response(status, headers=headers, text=text, request=request)


def test_raise_for_delivery_mapping() -> None:
    for ok in (200, 201, 202, 204):
        raise_for_delivery(response(ok))
    for status in (408, 425, 429, 500, 503, 599):
        with pytest.raises(TransientDeliveryError):
            raise_for_delivery(response(status))
    for status in (301, 400, 401, 403, 404, 409, 413, 422):
        with pytest.raises(PermanentDeliveryError, match=f"HTTP {status} from hooks.example.com"):
            raise_for_delivery(response(status))


def test_retry_after_as_an_http_date() -> None:
    with pytest.raises(TransientDeliveryError) as info:
        raise_for_delivery(response(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert info.value.retry_after == 0.0  # in the past: retry now
    with pytest.raises(TransientDeliveryError) as info:
        raise_for_delivery(response(503, {"Retry-After": "soon"}))
    assert info.value.retry_after is None


# ----------------------------------------------------------------- the direct path of the transport


def test_the_direct_path_answers_as_the_regular_client_path(server: LocalServer) -> None:
    server.route("/same", Reply(201, json={"id": "evt_9", "note": "Zoë"}, headers={"X-Extra": "a"}))

    async def both() -> tuple[httpx.Response, httpx.Response]:
        async with make_client(timeout=5) as client:
            assert isinstance(client, _DeliveryClient)
            request = httpx.Request("POST", server.url + "/same?x=1", content=b"{}")
            direct = await client.send_direct(request)
            regular = await client.post(server.url + "/same?x=1", content=b"{}")
            return direct, regular

    direct, regular = asyncio.run(both())
    assert direct.status_code == regular.status_code == 201
    assert direct.json() == regular.json() == {"id": "evt_9", "note": "Zoë"}
    assert direct.headers["x-extra"] == regular.headers["x-extra"] == "a"
    assert direct.request.url.path == "/same" and direct.is_closed
    assert [r.path for r in server.requests] == ["/same", "/same"]
    assert [r.query for r in server.requests] == ["x=1", "x=1"]


def test_the_direct_path_decodes_a_compressed_answer(server: LocalServer) -> None:
    packed = gzip.compress(json.dumps({"id": "evt_gz"}).encode())
    server.route(
        "/gz",
        Reply(200, body=packed, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}),
    )
    result = asyncio.run(send(hook(server.url + "/gz")))
    assert result[0].provider_id == "evt_gz"


def test_the_direct_path_sends_non_ascii_header_values_as_utf8(server: LocalServer) -> None:
    async def go() -> httpx.Response:
        async with make_client(timeout=5) as client:
            assert isinstance(client, _DeliveryClient)
            request = httpx.Request(
                "POST", server.url + "/h", content=b"x", headers=[(b"X-Name", "Zoë".encode())]
            )
            return await client.send_direct(request)

    assert asyncio.run(go()).status_code == 200
    raw = server.requests[-1].header("x-name")
    assert raw is not None and raw.encode("latin-1").decode("utf-8") == "Zoë"


def test_a_malformed_url_is_permanent_on_the_direct_path() -> None:
    error = send_error(hook("http://[::1/hooks"))
    assert isinstance(error, PermanentDeliveryError)
    assert "invalid URL" in str(error) or "unsupported URL" in str(error)


def test_cookies_a_receiver_sets_are_never_sent_back(server: LocalServer) -> None:
    server.route("/hook", Reply(200, json={"ok": True}, headers={"Set-Cookie": "session=abc; Path=/"}))
    # by name: aiohttp's cookie jar ignores cookies from bare IP addresses
    url = server.url.replace("127.0.0.1", "localhost") + "/hook"
    asyncio.run(send(hook(url, key="pb:c1:hook:1"), hook(url, key="pb:c2:hook:1")))
    first, second = server.wait_for(2)
    assert first.header("Cookie") is None and second.header("Cookie") is None


# ------------------------------------------- the aiohttp fast path and the httpx path send the same


async def send_with(client: httpx.AsyncClient, delivery: Delivery) -> DeliveryResult | BaseException:
    async with client:
        try:
            return await WebhookChannel(client, secret=SECRET).send(delivery)
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            return exc


def test_any_httpx_client_sends_the_same_request_and_maps_answers_the_same(server: LocalServer) -> None:
    headers = {"User-Agent": "automation/0.1"}
    fast = make_client(timeout=5)
    taken: list[str] = []
    post_bytes = fast.post_bytes  # type: ignore[attr-defined]

    def counted(url: str, *rest: object) -> object:
        taken.append(url)
        return post_bytes(url, *rest)

    fast.post_bytes = counted  # type: ignore[attr-defined]
    plain = httpx.AsyncClient(timeout=5, headers=headers)  # no fast path: through httpx
    assert not hasattr(plain, "post_bytes")
    server.route("/id", Reply(202, json={"id": "evt_1"}))
    results = [asyncio.run(send_with(c, hook(server.url + "/id"))) for c in (fast, plain)]
    assert [r.provider_id for r in results] == ["evt_1", "evt_1"]  # type: ignore[union-attr]
    assert taken == [server.url + "/id"]  # the first went the fast way
    first, second = server.requests[-2:]
    assert first.signature_ok and second.signature_ok
    assert first.body == second.body == BODY.encode()
    same = ("content-type", "idempotency-key", "webhook-id", "user-agent", "content-length", "host")
    assert [first.header(h) for h in same] == [second.header(h) for h in same]

    for status, extra in ((429, {"retry_after": 9}), (404, {})):
        errors = []
        for client in (make_client(timeout=5), httpx.AsyncClient(timeout=5, headers=headers)):
            server.fail_next(status=status, **extra)  # type: ignore[arg-type]
            errors.append(asyncio.run(send_with(client, hook(server.url))))
        assert type(errors[0]) is type(errors[1])
        assert str(errors[0]) == str(errors[1])
        assert getattr(errors[0], "retry_after", None) == getattr(errors[1], "retry_after", None)
    assert isinstance(errors[0], PermanentDeliveryError) and "HTTP 404" in str(errors[0])


def test_an_unsupported_scheme_does_not_quote_the_url() -> None:
    error = send_error(hook("ftp://127.0.0.1/hooks?token=SECRET-TOKEN"))
    assert isinstance(error, PermanentDeliveryError)
    assert "SECRET-TOKEN" not in str(error) and "unsupported URL scheme" in str(error)


def test_a_redirect_is_not_followed_and_is_permanent(server: LocalServer) -> None:
    server.route("/moved", Reply(302, headers={"Location": "http://hooks.example.org/new?token=T"}))
    error = send_error(hook(server.url + "/moved"))
    assert isinstance(error, PermanentDeliveryError)
    assert "HTTP 302" in str(error) and "redirect to hooks.example.org" in str(error)
    assert "token=T" not in str(error)
    assert [r.path for r in server.requests] == ["/moved"]  # nothing was sent to the new place
