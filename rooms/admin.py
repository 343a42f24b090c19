from __future__ import annotations

from django.contrib import admin

from rooms import services
from rooms.models import ApiToken, Membership, Message, Room, RoomEvent, StreamChunk


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]
    readonly_fields = ["banned_at"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["room", "user", "role", "banned_at", "joined_at"]
    list_filter = ["role"]
    raw_id_fields = ["room", "user"]
    actions = ["ban", "unban"]

    @admin.action(description="Ban from the room (closes their sockets)")
    def ban(self, request, queryset):
        for membership in queryset.exclude(role=Membership.Role.OWNER).select_related("room", "user"):
            services.member_ban(room=membership.room, user=membership.user)

    @admin.action(description="Lift the ban")
    def unban(self, request, queryset):
        for membership in queryset.select_related("room", "user"):
            services.member_unban(room=membership.room, user=membership.user)


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


from rooms.webhooks import admin as webhooks_admin  # noqa: E402, F401  (webhooks in and out)
