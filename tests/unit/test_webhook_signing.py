"""The Standard Webhooks signature: what signature_verify accepts and refuses (before parsing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rooms.webhooks.inbound import field_at
from rooms.webhooks.signing import SignatureInvalid, headers_signed, secret_new, signature_verify

BODY = '{"text": "hi"}'


def test_a_signed_body_verifies_and_gives_the_signed_id():
    secret = secret_new()
    headers = headers_signed(secret=secret, msg_id="msg_1", body=BODY, now=datetime.now(UTC))
    assert signature_verify(secret=secret, body=BODY.encode(), headers=headers) == "msg_1"
    upper = {k.upper(): v for k, v in headers.items()}  # header names are case-insensitive
    assert signature_verify(secret=secret, body=BODY.encode(), headers=upper) == "msg_1"


@pytest.mark.parametrize(
    "change",
    [
        lambda h, b: (h, b + b" "),  # the body changed
        lambda h, b: (h | {"webhook-id": "msg_2"}, b),  # another id than the one signed
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
        lambda h, b: (h | {"webhook-signature": "v1"}, b),  # no comma
        lambda h, b: (h | {"webhook-signature": "v1,%%%"}, b),  # not base64
        lambda h, b: (h | {"webhook-timestamp": "yesterday"}, b),
        lambda h, b: (h, b"\xff\xfe"),  # not UTF-8
    ],
)
def test_a_changed_or_malformed_request_is_refused(change):
    secret = secret_new()
    headers = headers_signed(secret=secret, msg_id="msg_1", body=BODY, now=datetime.now(UTC))
    headers, body = change(headers, BODY.encode())
    with pytest.raises(SignatureInvalid):
        signature_verify(secret=secret, body=body, headers=headers)


def test_another_secret_or_a_stale_timestamp_is_refused():
    secret = secret_new()
    now = datetime.now(UTC)
    headers = headers_signed(secret=secret, msg_id="m", body=BODY, now=now)
    with pytest.raises(SignatureInvalid):
        signature_verify(secret=secret_new(), body=BODY.encode(), headers=headers)
    stale = headers_signed(secret=secret, msg_id="m", body=BODY, now=now - timedelta(minutes=6))
    with pytest.raises(SignatureInvalid, match="too old"):
        signature_verify(secret=secret, body=BODY.encode(), headers=stale)


def test_field_paths_reach_into_objects_and_lists():
    payload = {"message": {"text": "hi", "to": [{"name": "a"}]}, "id": 3}
    assert field_at(payload, "message.text") == "hi"
    assert field_at(payload, "message.to.0.name") == "a"
    assert field_at(payload, "id") == 3
    assert field_at(payload, "message.to.5.name") is None
    assert field_at(payload, "message.text.more") is None


def test_urls_into_the_sites_own_network_are_refused_unless_allowed(settings):
    from rooms.webhooks.outbound import AddressRefused, url_check

    settings.WEBHOOK_ALLOW_PRIVATE = False
    for url in (
        "http://127.0.0.1:6379/",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/",
    ):
        with pytest.raises(AddressRefused):
            url_check(url)
    url_check("http://93.184.215.14/hook")  # a public address (not resolved: a literal)
    settings.WEBHOOK_ALLOW_PRIVATE = True
    url_check("http://127.0.0.1:8066/hook")
