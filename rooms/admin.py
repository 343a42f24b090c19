from __future__ import annotations

from django.contrib import admin

from rooms.models import ApiToken, Membership, Message, Room, RoomEvent, StreamChunk


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "owner", "visibility", "ai_enabled", "ai_trigger", "last_seq"]
    list_filter = ["visibility", "ai_enabled"]
    search_fields = ["slug", "title"]
    readonly_fields = ["last_seq", "invite_token", "created_at"]
    inlines = [MembershipInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "seq", "role", "author", "status", "created_at"]
    list_filter = ["role", "status"]
    search_fields = ["content"]
    raw_id_fields = ["room", "author"]
    readonly_fields = ["seq", "client_id", "created_at", "updated_at"]


@admin.register(StreamChunk)
class StreamChunkAdmin(admin.ModelAdmin):
    list_display = ["id", "message", "index"]
    raw_id_fields = ["message"]


@admin.register(RoomEvent)
class RoomEventAdmin(admin.ModelAdmin):
    list_display = ["room", "seq", "type", "created_at"]
    list_filter = ["type"]
    raw_id_fields = ["room"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "key_hash"]
