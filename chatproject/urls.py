from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from agents import observe, schedule_views
from agents.mcp import views as mcp_views
from rooms import health, views, views_moderation
from rooms.api import api
from rooms.webhooks import inbound as webhooks_in
from rooms.webhooks import views as webhooks_views

urlpatterns = [
    path("", views.home, name="home"),
    path("r/<slug:slug>/", views.room, name="room"),
    path("r/<slug:slug>/post/", views.room_post, name="room_post"),
    path("r/<slug:slug>/settings/", views.room_settings, name="room_settings"),
    path("r/<slug:slug>/mcp/", mcp_views.room_mcp, name="room_mcp"),
    path("r/<slug:slug>/earlier/", views.room_earlier, name="room_earlier"),
    path("r/<slug:slug>/moderate/", views_moderation.room_moderate, name="room_moderate"),
    path("r/<slug:slug>/report/", views_moderation.room_report, name="room_report"),
    path("profile/", views.profile, name="profile"),
    path("r/<slug:slug>/join/<str:token>/", views.room_invite, name="room_invite"),
    path("signup/", views.signup, name="signup"),
    path("guest/", views.guest, name="guest"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
    path("r/<slug:slug>/schedules/", schedule_views.room_schedules, name="room_schedules"),
    path(
        "r/<slug:slug>/schedules/<int:schedule_id>/",
        schedule_views.room_schedule_change,
        name="room_schedule_change",
    ),
    path("r/<slug:slug>/webhooks/", webhooks_views.room_webhooks, name="room_webhooks"),
    path("hooks/in/<str:key>/", webhooks_in.hook_receive, name="hook_receive"),
    path("metrics", observe.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # the HTTP API (/api/..., its docs at /api/docs) and the OpenAI-compatible door (/v1/...);
    # last: its root path must not shadow the home page
    path("", api.urls),
]
