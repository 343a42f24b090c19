"""chatproject/asgi.py makes autobahn's per-frame log arguments lazy: same text, no cost."""

from __future__ import annotations

import autobahn.util
import autobahn.websocket.protocol as ws_protocol

import chatproject.asgi


class _Peer:
    def sendData(self) -> None:
        pass


def test_autobahn_log_arguments_format_to_the_same_text_as_before():
    peer = _Peer()
    template = "{func} sent {data_len} bytes for peer {peer}"
    ours = template.format(
        func=ws_protocol.hltype(peer.sendData),
        data_len=ws_protocol.hlval(61),
        peer=ws_protocol.hlval("tcp:1.2.3.4"),
    )
    theirs = template.format(
        func=autobahn.util.hltype(peer.sendData),
        data_len=autobahn.util.hlval(61),
        peer=autobahn.util.hlval("tcp:1.2.3.4"),
    )
    assert ours == theirs == f"<{__name__}._Peer.sendData> sent 61 bytes for peer tcp:1.2.3.4"
    assert str(ws_protocol.hltype(peer.sendData)) == autobahn.util.hltype(peer.sendData)
    assert ws_protocol.hltype is not autobahn.util.hltype  # the patch is in place


def test_the_lazy_name_is_only_computed_when_a_message_is_rendered(monkeypatch):
    calls = []
    real = autobahn.util.hltype
    monkeypatch.setattr(chatproject.asgi, "_hltype", lambda obj: calls.append(obj) or real(obj))
    method = _Peer().sendData
    lazy = ws_protocol.hltype(method)
    assert calls == []  # what every frame pays: one small object
    assert f"{lazy}" == real(method) and calls == [method]
