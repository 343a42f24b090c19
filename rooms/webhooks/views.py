"""The owner's webhooks page: endpoints out (with their latest deliveries) and hooks in."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from rooms.models import Room
from rooms.webhooks import outbound
from rooms.webhooks.models import EVENT_TYPES, InboundHook, WebhookDelivery, WebhookEndpoint
from rooms.webhooks.signing import secret_new


class EndpointForm(forms.Form):
    url = forms.URLField(max_length=500, assume_scheme="https")
    events = forms.MultipleChoiceField(
        choices=[(e, e) for e in EVENT_TYPES], widget=forms.CheckboxSelectMultiple, initial=list(EVENT_TYPES)
    )


class InboundForm(forms.ModelForm):
    class Meta:
        model = InboundHook
        fields = ["name", "text_field", "id_field", "sender_field"]


@login_required
def room_webhooks(request: HttpRequest, slug: str) -> HttpResponse:
    """List, add and remove the room's webhooks (its owner only)."""
    room = get_object_or_404(Room, slug=slug)
    if room.owner_id != request.user.pk:
        return render(request, "forbidden.html", {"room_title": room.title}, status=403)
    endpoint_form = EndpointForm(request.POST if request.POST.get("form") == "endpoint" else None)
    inbound_form = InboundForm(request.POST if request.POST.get("form") == "inbound" else None)
    if request.method == "POST":
        action = request.POST.get("form")
        if action == "endpoint" and endpoint_form.is_valid():
            try:
                outbound.endpoint_create(room=room, user=request.user, **endpoint_form.cleaned_data)
            except outbound.AddressRefused as exc:
                endpoint_form.add_error("url", str(exc))
            else:
                messages.success(request, "Webhook added: deliveries start with the room's next event.")
                return redirect("room_webhooks", slug=slug)
        if action == "inbound" and inbound_form.is_valid():
            hook = inbound_form.save(commit=False)
            hook.room, hook.user, hook.secret = room, request.user, secret_new()
            hook.save()
            return redirect("room_webhooks", slug=slug)
        if action == "delete-endpoint":
            WebhookEndpoint.objects.filter(room=room, pk=request.POST.get("id", "0")).delete()
            outbound.hooked_rooms.forget()
            return redirect("room_webhooks", slug=slug)
        if action == "delete-inbound":
            InboundHook.objects.filter(room=room, pk=request.POST.get("id", "0")).delete()
            return redirect("room_webhooks", slug=slug)
    endpoints = list(WebhookEndpoint.objects.filter(room=room).order_by("id"))
    deliveries = WebhookDelivery.objects.filter(endpoint__room=room).select_related("endpoint")[:30]
    hooks = [
        (hook, request.build_absolute_uri(reverse("hook_receive", args=[hook.key])))
        for hook in InboundHook.objects.filter(room=room).order_by("id")
    ]
    context = {
        "room": room, "endpoints": endpoints, "deliveries": deliveries, "hooks": hooks,
        "endpoint_form": endpoint_form, "inbound_form": inbound_form,
    }  # fmt: skip
    return render(request, "webhooks.html", context, status=400 if request.method == "POST" else 200)
