"""Webhooks: room events out to registered URLs, and signed JSON in as posted messages.

models.py the endpoints and deliveries · signing.py the Standard Webhooks signature ·
outbound.py events to deliveries (an outbox read from the room's event log) and sending ·
inbound.py the signed endpoint that posts a message · tasks.py thin Celery tasks ·
views.py the owner's page · admin.py deliveries in the admin.
"""
