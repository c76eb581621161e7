"""SMS through Twilio's Messages API (or anything that speaks it).

One request per message::

    POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json
    Authorization: Basic base64(account_sid:auth_token)
    I-Twilio-Idempotency-Token: <the outbox idempotency key>
    Content-Type: application/x-www-form-urlencoded

    To=+14155550100&From=+14155550199&Body=...

``from_number`` may also be a Messaging Service SID (``MG...``): it is then sent as
``MessagingServiceSid`` instead of ``From``. The provider's message id (JSON ``sid``) is returned.
With ``status_callback`` (``AUTOMATION_PUBLIC_URL`` + :data:`STATUS_CALLBACK_PATH`, see
:func:`status_callback_url`) each message asks Twilio to report its delivery there (``StatusCallback``).

Environment variables the dispatcher reads to build this channel:

* ``AUTOMATION_SMS_URL``          base URL: ``https://api.twilio.com`` (or ``http://127.0.0.1:PORT`` in tests)
* ``AUTOMATION_SMS_ACCOUNT_SID``  account SID (``AC...``), also the Basic-auth user name
* ``AUTOMATION_SMS_AUTH_TOKEN``   auth token, the Basic-auth password
* ``AUTOMATION_SMS_FROM``         sender: an E.164 number or a Messaging Service SID (``MG...``)
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import httpx

from automation.channels.base import Delivery, DeliveryResult
from automation.channels.http import raise_for_delivery, send_errors
from automation.errors import ConfigError, PermanentDeliveryError
from automation.masking import mask_phone

__all__ = [
    "ENV_ACCOUNT_SID",
    "ENV_AUTH_TOKEN",
    "ENV_FROM",
    "ENV_URL",
    "IDEMPOTENCY_HEADER",
    "STATUS_CALLBACK_PATH",
    "TwilioSms",
    "status_callback_url",
]

ENV_URL = "AUTOMATION_SMS_URL"
ENV_ACCOUNT_SID = "AUTOMATION_SMS_ACCOUNT_SID"
ENV_AUTH_TOKEN = "AUTOMATION_SMS_AUTH_TOKEN"
ENV_FROM = "AUTOMATION_SMS_FROM"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
#: Where ``automation serve`` takes Twilio's status callbacks (automation.web.twilio).
STATUS_CALLBACK_PATH = "/providers/twilio/status"

log = logging.getLogger(__name__)


def status_callback_url(public_url: str) -> str | None:
    """The ``StatusCallback`` for messages when ``automation serve`` is reachable at ``public_url``
    (``AUTOMATION_PUBLIC_URL``); None when no public URL is configured."""
    base = public_url.strip().rstrip("/")
    return base + STATUS_CALLBACK_PATH if base else None


class TwilioSms:
    """The ``sms`` channel. ``client`` comes from :func:`automation.channels.http.make_client` and is
    closed by whoever created it (pass ``owns_client=True`` to have :meth:`aclose` close it)."""

    name = "sms"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        from_number: str,
        owns_client: bool = False,
        status_callback: str | None = None,
    ) -> None:
        missing = [
            env
            for env, value in (
                (ENV_URL, base_url),
                (ENV_ACCOUNT_SID, account_sid),
                (ENV_AUTH_TOKEN, auth_token),
                (ENV_FROM, from_number),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"SMS is not configured: set {', '.join(missing)}")
        self._client = client
        self._owns_client = owns_client
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}/Messages.json"
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        self._sender_field = "MessagingServiceSid" if from_number.startswith("MG") else "From"
        self.from_number = from_number
        self.status_callback = status_callback

    async def send(self, delivery: Delivery) -> DeliveryResult:
        """Send one SMS; the result's ``provider_id`` is the provider's message SID."""
        if not delivery.to:
            raise PermanentDeliveryError("no phone number")
        body = delivery.rendered.body
        if not body:
            raise PermanentDeliveryError("the rendered SMS has no body")
        form = {"To": delivery.to, self._sender_field: self.from_number, "Body": body}
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        with send_errors(f"SMS to {mask_phone(delivery.to)}"):
            response = await self._client.post(
                self.url,
                data=form,
                auth=self._auth,
                headers={IDEMPOTENCY_HEADER: delivery.idempotency_key, "Accept": "application/json"},
            )
        raise_for_delivery(response)
        provider_id: str | None = None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict) and payload.get("sid") is not None:
            provider_id = str(payload["sid"])
        else:  # accepted (2xx) all the same: sending it again would send a second SMS
            log.warning("SMS to %s accepted without a message sid in the response", mask_phone(delivery.to))
        log.debug("SMS to %s accepted as %s", mask_phone(delivery.to), provider_id)
        return DeliveryResult(provider_id=provider_id)

    async def aclose(self) -> None:
        """Close the HTTP client if this channel owns it."""
        if self._owns_client:
            await self._client.aclose()
