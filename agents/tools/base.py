"""What a server tool is: a name, a JSON Schema for its input, its effects, and `run`.

A tool declares whether it changes anything (`side_effects`) and whether running it twice is
harmless (`idempotent`): the turn runner never runs a started side-effecting call again after a
crash unless the tool is idempotent (ARCHITECTURE.md, "Tools and the agent loop").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


class ToolError(Exception):
    """The call failed in a way the model should hear about (bad input, nothing found...)."""


class ToolOutcomeUnknown(ToolError):
    """The work was handed on and no answer came back (a remote call timed out or lost its
    connection): the call ends `interrupted`, since it may or may not have taken effect."""


@dataclass(frozen=True)
class ToolContext:
    """Who and where a call runs for: the room, the turn, the person whose message started it."""

    room_id: int
    turn_id: int
    call_id: int
    initiator_id: int | None


class Tool(ABC):
    """A server tool. One instance per process; `run` may be called from several threads."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the input (an object)
    side_effects: bool = False
    idempotent: bool = True
    ask_first: bool = False  # the default of a room's "ask first" setting for this tool

    @abstractmethod
    def run(self, ctx: ToolContext, args: dict[str, Any]) -> Any:
        """Do the work; return JSON-serialisable output, or raise ToolError."""

    def spec(self) -> dict[str, Any]:
        """The tool as the model is offered it (OpenAI `tools` entry)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }
