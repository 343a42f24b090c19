"""The database protections in chatproject/settings.py, against the real Postgres."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_session_has_the_idle_in_transaction_timeout():
    with connection.cursor() as cursor:
        cursor.execute("SHOW idle_in_transaction_session_timeout")
        (value,) = cursor.fetchone()
    ms = settings.DB_IDLE_IN_TRANSACTION_TIMEOUT_MS  # 5000 unless the environment says otherwise
    assert value == ("0" if ms == 0 else f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms")


def test_a_session_frozen_inside_a_transaction_is_ended_and_its_row_lock_released(room):
    # A process stopped mid-transaction (SIGSTOP, a debugger) holding a room's row lock: with
    # the timeout Postgres ends the session, and the room's other writers go on.
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params["options"] = "-c idle_in_transaction_session_timeout=300"  # the same, shorter
    frozen = psycopg.connect(**params)
    frozen.execute("SELECT 1 FROM rooms_room WHERE id = %s FOR UPDATE", [room.pk])
    time.sleep(1.0)  # idle in its transaction, past the timeout
    other = psycopg.connect(**{**params, "options": ""}, autocommit=True)
    try:
        other.execute("SET lock_timeout = '2s'")
        other.execute("SELECT 1 FROM rooms_room WHERE id = %s FOR UPDATE NOWAIT", [room.pk])
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            frozen.execute("SELECT 1")  # its session was terminated
    finally:
        other.close()
        frozen.close()
