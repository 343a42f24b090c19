"""Forms for the pages: create a room, sign up, join as guest, name a token, post a message."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.forms import UserCreationForm

from rooms.models import Room
from rooms.services import models_allowed
from rooms.turns import AgentSetup, ToolInfo, turn_queue


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


class RoomAgentsForm(forms.Form):
    """The owner's agent settings of a room (docs/agents.md): the room as an agent other rooms'
    assistants may call, and the agents this room's assistant may call."""

    is_agent = forms.BooleanField(required=False, label="This room is an agent")
    agent_name = forms.RegexField(
        regex=r"^[a-z0-9][a-z0-9-]{0,39}$", required=False, max_length=40, label="Agent name",
        help_text="Lower-case letters, digits and dashes: the calling model sees the tool ask_<name>.",
        error_messages={"invalid": "Use lower-case letters, digits and dashes (at most 40)."},
    )  # fmt: skip
    agent_description = forms.CharField(required=False, max_length=500, label="What it is good for")
    agents_on = forms.TypedMultipleChoiceField(
        required=False, coerce=int, widget=forms.CheckboxSelectMultiple, label="Agents the assistant may call"
    )

    def __init__(self, data: Any = None, *, room: Room) -> None:
        self.room = room
        self.setup, self.choices = turn_queue().agent_settings(room=room)
        initial: dict[str, Any] = {"agents_on": [c.id for c in self.choices if c.chosen]}
        if self.setup is not None:
            initial |= {"is_agent": self.setup.enabled, "agent_name": self.setup.name,
                        "agent_description": self.setup.description}  # fmt: skip
        super().__init__(data, initial=initial)
        self.fields["agents_on"].choices = [(c.id, c.title) for c in self.choices]  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("is_agent"):
            for name in ("agent_name", "agent_description"):
                if not (data.get(name) or "").strip():
                    self.add_error(name, "An agent needs a name and a description.")
        return data

    def rows(self) -> list[dict[str, Any]]:
        """One row per agent the owner may choose, with its box as the form holds it."""
        on = {int(v) for v in self["agents_on"].value() or ()}
        return [{"agent": c, "on": c.id in on} for c in self.choices]

    def save(self) -> None:
        """Save through the turn queue; a name already taken becomes the form's error."""
        data = self.cleaned_data
        setup = None
        if data["is_agent"] or self.setup is not None:
            name = data["agent_name"] or (self.setup.name if self.setup else "")
            setup = AgentSetup(bool(data["is_agent"]), name, (data["agent_description"] or "").strip())
        turn_queue().agent_settings_save(room=self.room, setup=setup, chosen=list(data["agents_on"]))


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
