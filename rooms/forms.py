"""Forms for the pages: create a room, sign up, join as guest, name a token, post a message."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth.forms import UserCreationForm

from rooms.models import Room


class RoomCreateForm(forms.ModelForm):
    class Meta:
        model = Room
        fields = ["title", "visibility", "ai_enabled", "ai_model", "system_prompt", "ai_trigger"]
        labels = {
            "ai_enabled": "AI assistant on",
            "ai_model": "Model (empty: the server's default)",
            "ai_trigger": "The AI answers",
        }
        widgets = {"system_prompt": forms.Textarea(attrs={"rows": 3})}

    def clean_title(self) -> str:
        title = self.cleaned_data["title"].strip()
        if not title:
            raise forms.ValidationError("A room needs a title.")
        return title


class RoomSettingsForm(forms.ModelForm):
    """The owner's settings of a room, AI included."""

    class Meta:
        model = Room
        fields = [
            "title",
            "visibility",
            "ai_enabled",
            "ai_model",
            "system_prompt",
            "ai_trigger",
            "recovery",
        ]
        labels = RoomCreateForm.Meta.labels | {"recovery": "If a worker dies mid-answer"}
        widgets = {"system_prompt": forms.Textarea(attrs={"rows": 4})}

    clean_title = RoomCreateForm.clean_title


class ProfileForm(forms.Form):
    display_name = forms.CharField(max_length=60, min_length=1, strip=True)


class SignupForm(UserCreationForm):
    display_name = forms.CharField(max_length=60, required=False, help_text="Shown to others.")

    class Meta(UserCreationForm.Meta):  # type: ignore[name-defined]  # the stubs leave Meta out
        fields = ("username",)

    def save(self, commit: bool = True):
        user = super().save(commit=False)
        user.first_name = self.cleaned_data.get("display_name", "").strip()
        if commit:
            user.save()
        return user


class GuestForm(forms.Form):
    display_name = forms.CharField(max_length=60, min_length=1, strip=True)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=80, strip=True)


class MessageForm(forms.Form):
    """The no-JavaScript composer."""

    client_id = forms.UUIDField()
    content = forms.CharField(strip=False)

    def clean_content(self) -> str:
        content = self.cleaned_data["content"]
        if not content.strip():
            raise forms.ValidationError("The message is empty.")
        if len(content) > settings.CHAT_MAX_MESSAGE_CHARS:
            raise forms.ValidationError("The message is too long.")
        if "\x00" in content:
            raise forms.ValidationError("The message contains a NUL character.")
        return content
