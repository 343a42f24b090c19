"""How the offline demo model uses the built-in tools: what it reads as a request for one in the
last user message (a few phrasings, by pattern), and how it words the results it gets back.

Deliberately small and predictable: the point is to show the tool loop (calls, approvals,
results) without a real model, not to understand language.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from .base import ChatMessage, ModelRequest


@dataclass(frozen=True)
class PlannedCall:
    name: str
    arguments: dict[str, Any]


_I = re.IGNORECASE
_MENTION = re.compile(r"@ai\b", _I)
_SPEAKER = re.compile(r"^[^:\n]{1,60}:\s+")  # the runner writes user messages as "Name: text"

_NOTE = re.compile(
    r"\b(?:remember|note(?:\s+down)?|make\s+a\s+note|add\s+a\s+note|take\s+a\s+note|write\s+down)"
    r"\b[^:\n]{0,40}:\s*(?P<text>\S[\s\S]*)",
    _I,
)
_TIME = re.compile(
    r"\bwhat(?:'s|\s+is)?\s+(?:the\s+)?(?:current\s+)?(?:time|date|day)\b|\bwhat\s+time\b"
    r"|\bwhat\s+day\s+is\s+(?:it|today)\b|\btoday'?s\s+date\b|\bcurrent\s+(?:time|date)\b",
    _I,
)
_ZONE = re.compile(r"\bin\s+(?P<zone>[A-Za-z]+/[A-Za-z_]+(?:/[A-Za-z_]+)?|UTC)\b")
_PERCENT_OF = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s*(?:%|percent)\s+of\s+\d+(?:,\d{3})*(?:\.\d+)?", _I)
# a lookahead, so that each "what is" starts a candidate even inside an earlier one
_CALC_ASK = re.compile(
    r"(?=\b(?:calculate|compute|evaluate|what'?s|what\s+is|how\s+much\s+is)\s+(?P<expr>[^?!\n]+))", _I
)
_CLAUSE_END = re.compile(r"\s+(?:and|then|also|please)\b|;", _I)
_CALC_TOKEN = re.compile(r"\d+(?:\.\d+)?|[A-Za-z_]+|\*\*|//|\S")
_CALC_WORDS = {"sqrt", "abs", "round", "min", "max", "log", "exp", "sin", "cos", "tan", "floor", "ceil",
               "pi", "e", "of", "percent"}  # fmt: skip
_CALC_OPERATORS = {"+", "-", "*", "/", "//", "**", "%", "^", "×", "÷"}
_WHEN = r"yesterday|today|this\s+week|last\s+week"
_SAID = re.compile(
    r"\bwhat\s+(?:did|has)\s+(?P<author>[\w.'-]+(?:\s+[\w.'-]+)?)\s+(?:say|said|write|written|post|"
    r"posted|mention|mentioned)\b(?:\s+(?:about|on|regarding)\s+(?P<query>[^?!\n]+?))?"
    rf"(?:\s+(?P<when>{_WHEN}))?\s*(?:[?!.]|$)",
    _I,
)
_SEARCH = re.compile(
    r"\b(?:search(?:\s+(?:the\s+)?(?:room|chat|transcript|messages))?(?:\s+for)?"
    r"|find\s+(?:messages|what\s+was\s+said)\s+(?:about|on)|who\s+(?:said|mentioned|talked\s+about))"
    rf"\s+(?P<query>[^?!\n]+?)(?:\s+(?P<when>{_WHEN}))?\s*(?:[?!.]|$)",
    _I,
)
_NOBODY = {"anyone", "anybody", "someone", "somebody", "everyone", "everybody", "people", "we", "they"}
_ASSISTANT = {"you", "the assistant", "assistant", "ai", "the ai"}


def user_text(request: ModelRequest) -> str | None:
    """The last message's text if it is a person's (tools are planned for it), else None."""
    if not request.messages or request.messages[-1].role != "user":
        return None
    return _MENTION.sub("", request.messages[-1].content).strip()


def offered_tools(request: ModelRequest) -> set[str]:
    """The names of the tools the request offers (OpenAI `tools` entries)."""
    names = set()
    for spec in request.tools:
        function = spec.get("function")
        name = (function if isinstance(function, dict) else spec).get("name")
        if isinstance(name, str):
            names.add(name)
    return names


def calls_planned(text: str, offered: set[str], *, today: date) -> list[PlannedCall]:
    """The tool calls the demo model makes for a user message: none if it asks for none."""
    note = _NOTE.search(text)
    if note and "note" in offered:  # a note's text is not searched for other requests
        return [PlannedCall("note", {"text": note["text"].strip()[:2000]})]
    planned = []
    expression = _expression(text)
    if expression and "calculator" in offered:
        planned.append(PlannedCall("calculator", {"expression": expression}))
    if _TIME.search(text) and "current_time" in offered:
        zone = _ZONE.search(text)
        planned.append(PlannedCall("current_time", {"timezone": zone["zone"]} if zone else {}))
    search = _search_args(text, today=today)
    if search is not None and "search_room" in offered:
        planned.append(PlannedCall("search_room", search))
    return planned


def _expression(text: str) -> str | None:
    if found := _PERCENT_OF.search(text):
        return found.group(0)
    for candidate in (m["expr"] for m in _CALC_ASK.finditer(text)):
        candidate = _CLAUSE_END.split(candidate, maxsplit=1)[0].strip().rstrip(".=").strip()
        if _arithmetic(candidate):
            return candidate
    for candidate in (text, _SPEAKER.sub("", text, count=1)):  # the whole message a sum
        candidate = candidate.strip().rstrip("?=").strip()
        if _arithmetic(candidate):
            return candidate
    return None


def _arithmetic(text: str) -> bool:
    tokens = _CALC_TOKEN.findall(text)
    known = all(
        t[0].isdigit() or t in _CALC_OPERATORS or t in "()., " or t.lower() in _CALC_WORDS for t in tokens
    )
    has_number = any(t[0].isdigit() or t.lower() in ("pi", "e") for t in tokens)
    has_operation = any(t in _CALC_OPERATORS or t.lower() in _CALC_WORDS - {"pi", "e"} for t in tokens)
    return bool(tokens) and known and has_number and has_operation


def _search_args(text: str, *, today: date) -> dict[str, Any] | None:
    args: dict[str, Any]
    if said := _SAID.search(text):
        author = said["author"].strip()
        args = {"query": _unquoted(said["query"] or "")}
        if author.lower() in _ASSISTANT:
            args["author"] = "Assistant"
        elif author.lower() not in _NOBODY:
            args["author"] = author
        when = said["when"]
    elif found := _SEARCH.search(text):
        args, when = {"query": _unquoted(found["query"])}, found["when"]
    else:
        return None
    if when:
        days = {"yesterday": 1, "today": 0}.get(when.lower(), 7)
        args["since"] = (today - timedelta(days=days)).isoformat()
    return args


def _unquoted(text: str) -> str:
    return text.strip().strip("\"'“”‘’").strip()


# --- answering with the results -----------------------------------------------------------------


def results_answer(request: ModelRequest) -> str:
    """The demo model's answer to the tool results that end the request's messages."""
    results: list[ChatMessage] = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        results.insert(0, message)
    names = {}
    for message in request.messages:
        for call in message.tool_calls:
            function = call.get("function") or {}
            names[call.get("id")] = function.get("name", "tool")
    parts = [_result_text(names.get(m.tool_call_id, "tool"), m.content) for m in results]
    return "\n\n".join(parts) + "\n\n_(Demo model, offline: it used the tools but wrote this by rule.)_"


def _result_text(name: str, content: str) -> str:
    try:
        output: Any = json.loads(content)
    except ValueError:
        output = content
    if isinstance(output, dict) and "error" in output and len(output) <= 2:
        return f"The `{name}` tool failed: {output['error']}"
    if not isinstance(output, dict):
        return f"The `{name}` tool said: {str(output)[:500]}"
    if name == "calculator" and "result" in output:
        return f"{output.get('expression', 'The result')} = **{output['result']}**"
    if name == "current_time" and "date" in output:
        return (
            f"It is **{output.get('weekday', '')} {output['date']}, {output.get('time', '')}** "
            f"({output.get('timezone', 'UTC')})."
        )
    if name == "search_room" and isinstance(output.get("results"), list):
        found = output["results"]
        if not found:
            return "I found no message about that in this room."
        quotes = []
        for hit in found[:5]:
            when = str(hit.get("created_at", ""))[:16].replace("T", " ")
            quotes.append(f"> **{hit.get('author', '?')}** ({when}): {hit.get('excerpt', '')}")
        header = f"I found {len(found)} message{'s' if len(found) != 1 else ''}:"
        return header + "\n\n" + "\n>\n".join(quotes)
    if name == "note" and "text" in output:
        return f"Noted in the room's notes: “{output['text']}”"
    return f"The `{name}` tool returned:\n\n```json\n{json.dumps(output, indent=2)[:1500]}\n```"
