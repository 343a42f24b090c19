"""The shape of the code, checked: data flows one way (rooms never imports agents), and the
room socket has one handler per client frame type."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from rooms.protocol import ClientFrame

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_rooms_never_imports_agents() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.split(".")[0] == "agents")
        for path in (ROOT / "rooms").rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, f"rooms must reach agents through settings.ROOM_TURN_QUEUE: {offenders}"


def test_the_import_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from agents.turns import turn_cancel\n")
    assert "agents.turns" in _imports(sample)


def test_every_client_frame_type_has_its_own_handler() -> None:
    from rooms.consumers import RoomConsumer

    union = typing.get_args(ClientFrame)[0]
    types = {model.model_fields["type"].annotation.__args__[0] for model in typing.get_args(union)}
    missing = {t for t in types if not callable(getattr(RoomConsumer, f"on_{t}", None))}
    assert missing == set()
    assert len(types) == 10
