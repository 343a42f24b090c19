"""Idempotency-Key bookkeeping on the real database: claim, answer, conflict, expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from rooms.api.errors import ApiFailure
from rooms.api.idempotency import key_answer, key_checked, key_claim, key_client_id, key_release
from rooms.models import ApiIdempotencyKey
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def test_a_key_is_claimed_once_answers_the_same_and_refuses_another_request() -> None:
    user, _ = make_user("Ada")
    first = key_claim(user=user, key="k", endpoint="POST /x", fingerprint="a")
    assert first.created and first.answer is None
    retry = key_claim(user=user, key="k", endpoint="POST /x", fingerprint="a")
    assert not retry.created and retry.answer is None  # not answered yet: the retry runs again
    assert key_answer(claim=first, status=201, body={"n": 1}) == (201, {"n": 1})
    assert key_answer(claim=retry, status=201, body={"n": 2}) == (201, {"n": 1})  # the first stored wins
    assert key_claim(user=user, key="k", endpoint="POST /x", fingerprint="a").answer == (201, {"n": 1})
    for other in ({"endpoint": "POST /y", "fingerprint": "a"}, {"endpoint": "POST /x", "fingerprint": "b"}):
        with pytest.raises(ApiFailure) as refused:
            key_claim(user=user, key="k", **other)
        assert refused.value.code == "idempotency_conflict" and refused.value.status == 409
    someone_else, _ = make_user("Bea")  # keys are per user
    assert key_claim(user=someone_else, key="k", endpoint="POST /y", fingerprint="b").created


def test_an_expired_key_is_forgotten_and_a_refused_request_frees_its_key(settings) -> None:
    user, _ = make_user("Ada")
    old = key_claim(user=user, key="old", endpoint="POST /x", fingerprint="a")
    key_answer(claim=old, status=201, body={"n": 1})
    past = timezone.now() - timedelta(seconds=settings.API_IDEMPOTENCY_TTL + 1)
    ApiIdempotencyKey.objects.filter(pk=old.row.pk).update(created_at=past)
    fresh = key_claim(user=user, key="old", endpoint="POST /x", fingerprint="b")
    assert fresh.created and fresh.answer is None
    key_release(claim=fresh)
    assert not ApiIdempotencyKey.objects.filter(user=user).exists()
    assert (
        key_client_id(user_id=1, key="k")
        == key_client_id(user_id=1, key="k")
        != key_client_id(user_id=2, key="k")
    )


@pytest.mark.parametrize("raw", ["", "a b", "x" * 201, "é"])
def test_an_unusable_key_is_refused(raw: str) -> None:
    with pytest.raises(ApiFailure) as refused:
        key_checked(raw)
    assert refused.value.code == "invalid"
