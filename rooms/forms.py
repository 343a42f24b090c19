"""Forms for the pages: create a room, sign up, join as guest, name a token, post a message."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.forms import UserCreationForm

from rooms.models import Room
from rooms.services import models_allowed
from rooms.turns import ToolInfo, turn_queue


def _model_field() -> forms.ChoiceField:
    """The owner picks a model from the server's list (LLM_MODELS), never free text."""
    choices = [("", f"The server's default ({settings.LLM_MODEL})")] + [(m, m) for m in models_allowed()]
    return forms.ChoiceField(choices=choices, required=False, label="Model")


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["ai_model"] = _model_field()

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["ai_model"] = _model_field()

    clean_title = RoomCreateForm.clean_title


class RoomToolsForm(forms.Form):
    """The owner's tool settings of a room: which server tools are on, which ask a person first.

    The choices are the catalog's names, so nothing else can be saved. A room whose fields are
    null follows the site's defaults (settings.AGENT_TOOLS_ON, or every tool; each tool's own
    ask_first); `changes()` saves a list only when the owner changed what the room has now.
    """

    tools_on = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)
    tools_ask_first = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)

    def __init__(self, data: Any = None, *, room: Room, catalog: list[ToolInfo] | None = None) -> None:
        self.catalog = turn_queue().tool_catalog() if catalog is None else catalog
        names = [t.name for t in self.catalog]
        default_on = [n for n in (settings.AGENT_TOOLS_ON or names) if n in names]
        on = room.tools_on if room.tools_on is not None else default_on
        if room.tools_ask_first is not None:
            ask = room.tools_ask_first
        else:
            ask = [t.name for t in self.catalog if t.ask_first]
        initial = {
            "tools_on": [n for n in names if n in on],
            "tools_ask_first": [n for n in names if n in ask],
        }
        super().__init__(data, initial=initial)
        for field in ("tools_on", "tools_ask_first"):
            self.fields[field].choices = [(n, n) for n in names]  # type: ignore[attr-defined]

    def rows(self) -> list[dict[str, Any]]:
        """One row per tool for the settings table, with the boxes as the form holds them."""
        on, ask = (set(self[f].value() or ()) for f in ("tools_on", "tools_ask_first"))
        return [
            {"tool": t, "on": t.name in on, "ask_first": t.name in ask, "id": f"tool-{t.name}"}
            for t in self.catalog
        ]

    def changes(self) -> dict[str, list[str]]:
        """The fields to save (services.room_update), in the catalog's order."""
        order = [t.name for t in self.catalog]
        return {f: [n for n in order if n in self.cleaned_data[f]] for f in self.changed_data}


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
