// room.js: the live client of one room page; the twin of RoomClient in rooms/client.py.
// It owns the socket and wires the two halves together: frames go into room/state.js (the
// protocol's client rules: seq order, delta indexes, snapshots, the outbox), and the changes it
// returns go to room/view.js (the DOM). This module adds what needs a socket or a clock:
//   - reconnect with backoff (0.5 s doubling to 10 s, with jitter) and ?since=lastSeq;
//   - ping every 20 s, and `sync` when the state asks for it (a gap, or a pong ahead of us);
//   - re-send unacked sends after `ready` with the same client_id (the server is idempotent),
//     keeping them across reloads in sessionStorage;
//   - offer the client tools of room/tools.js with every send, and answer this user's calls of
//     them (at once, or after the person's click), again after a reconnect if still waiting.

import { RoomState } from './room/state.js';
import { CLIENT_TOOLS, answerNow, chosen, isMine } from './room/tools.js';
import { createRoomView } from './room/view.js';

const PING_MS = 20_000;
const STALE_MS = 50_000; // no frame at all for this long: the socket is dead, reconnect
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const TYPING_SEND_MS = 2_000; // send at most one `typing` frame per this interval
const MAX_FRAME_BYTES = 64 * 1024; // CHAT_MAX_FRAME_BYTES default
const RELOAD_AGAIN_MS = 30_000; // after a 4413, reload the page at most once in this long

// Close codes after which reconnecting cannot help.
const PERMANENT = {
  4401: 'Not signed in (or your session ended). Log in and reload the page.',
  4403: 'You are not a member of this room. Ask the owner for the invite link.',
  4410: 'A moderator disconnected you from this room. Reload the page to come back.',
  4404: 'This room does not exist any more.',
};

const root = document.getElementById('room');
if (root) start(root);

function start(root) {
  const slug = root.dataset.slug;
  const wsPath = root.dataset.wsPath;
  const me = { id: Number(root.dataset.me), name: root.dataset.meName || 'You',
    canModerate: root.dataset.canModerate === '1' };
  const outboxKey = `roomchat:outbox:${slug}`;
  const turnsKey = `roomchat:turns:${slug}`; // turns this tab's sends started (kept for reloads)
  const reloadKey = `roomchat:reloaded:${slug}`; // when a 4413 last reloaded this page

  let state = 'connecting';
  let ws = null;
  let attempt = 0; // reconnect attempts since the last `ready`
  let reconnectTimer = null;
  let pingTimer = null;
  let lastFrameAt = 0;
  let syncing = false; // a `sync` is in flight on this socket (cleared by `ready`)
  let stopped = false; // permanently refused: never reconnect
  let lastTypingSent = 0;

  const room = new RoomState({ lastSeq: parseInt(root.dataset.seq, 10) || 0, me: me.id });
  const view = createRoomView(root, me, {
    send,
    submit,
    typing() {
      const now = Date.now();
      if (now - lastTypingSent >= TYPING_SEND_MS && send({ type: 'typing' })) lastTypingSent = now;
    },
    stop() {
      const turnId = [...room.running].pop();
      if (turnId != null) send({ type: 'cancel', turn_id: turnId });
    },
    callsOf: (messageId) => room.callsOf(messageId),
    decide(callId, approved, reason) {
      const frame = { type: 'tool_approval', call_id: callId, approved };
      if (reason) frame.reason = reason;
      return send(frame);
    },
    choose(callId, option) {
      return answer(callId, chosen(option));
    },
  });
  for (const m of view.initial) room.seed(m);
  for (const call of view.initialCalls) room.seedCall(call);
  view.setupLoadEarlier((rows, calls) => {
    for (const m of rows) if (!room.messages.has(m.id)) room.seed(m);
    for (const call of calls) if (!room.calls.has(call.id)) room.seedCall(call);
  });

  function setState(next, detail) {
    state = next;
    view.setConnection(next, detail);
  }
  const updateStop = () => view.showStop(room.running.size > 0 && !stopped);

  // ---- frames ---------------------------------------------------------------------------------
  function handle(frame) {
    const seqBefore = room.lastSeq;
    const { sync, changes: all, outboxChanged } = room.apply(frame);
    if (outboxChanged) saveOutbox();
    if (room.lastSeq !== seqBefore) root.dataset.seq = room.lastSeq;
    // A second answer to a call (another tab of mine answered first) is refused: that is fine.
    const changes = all.filter((c) => !(c.type === 'error' && c.code === 'conflict' && answeredIds.has(c.call))
      && !(c.type === 'error' && c.ref === 'sync'));
    for (const c of all) {
      if (c.type === 'error' && c.ref === 'sync') { // syncs have their own rate: ask again later
        syncing = false;
        setTimeout(requestSync, 1000 * (c.retryAfter || 1));
      }
    }
    view.apply(changes);
    for (const change of changes) {
      if (change.type === 'turn') { updateStop(); noteMyTurn(change.turn); }
      if (change.type === 'ack' && mySends.has(change.clientId)) sentIds.add(change.messageId);
      if (change.type === 'message' && mySends.has(change.message.client_id)) sentIds.add(change.message.id);
      if (change.type === 'tool_call') toolCall(change.call);
      if (change.type === 'ready') { // caught up: live, and what we sent before goes out again
        syncing = false;
        attempt = 0;
        setState('live');
        for (const again of change.resend) send({ ...again, tools: CLIENT_TOOLS });
        for (const call of room.calls.values()) toolCall(call, true);
      }
    }
    if (sync) requestSync();
  }

  // ---- client tools: this user's calls of the tools this page offers -------------------------
  const answered = new Map(); // call id -> the answer sent ({output} or {error}), until it settles
  const answeredIds = new Set(); // every call this page answered (their `conflict`s are ignored)
  const mySends = new Set(); // client_ids of this tab's sends
  const sentIds = new Set(); // ids of the messages they stored
  const myTurns = new Set(loadList(turnsKey)); // turns those messages started

  function noteMyTurn(turn) {
    if (!sentIds.has(turn.trigger_message_id) || myTurns.has(turn.id)) return;
    myTurns.add(turn.id);
    saveList(turnsKey, [...myTurns].slice(-50));
  }

  // A call changed (or, after `ready`, every call we know): answer it if it waits on us. Once
  // answered, the answer goes out again after a reconnect until the call settles (a second
  // answer is refused with `conflict`, and ignored).
  function toolCall(call, again = false) {
    if (!isMine(call, me.id)) { answered.delete(call.id); return; }
    if (answered.has(call.id)) {
      if (again) sendResult(call.id, answered.get(call.id));
      return;
    }
    const now = answerNow(call);
    if (now === null) return; // `choose`: the view shows the options; the click answers
    // A name we do not know may be another client's of this user (a script): only calls of a
    // turn this tab started are refused here.
    if (now.error && !myTurns.has(call.turn_id)) return;
    answer(call.id, now);
  }

  function answer(callId, result) {
    answered.set(callId, result);
    answeredIds.add(callId);
    return sendResult(callId, result);
  }

  function sendResult(callId, result) {
    return send({ type: 'tool_result', call_id: callId, ...result });
  }

  function requestSync() {
    if (syncing || !isOpen()) return;
    syncing = true;
    send({ type: 'sync', since: room.lastSeq });
  }

  // ---- the socket -------------------------------------------------------------------------------
  const isOpen = () => ws !== null && ws.readyState === WebSocket.OPEN;
  function send(frame) {
    if (!isOpen()) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (stopped) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    let sock;
    try {
      sock = new WebSocket(`${scheme}://${location.host}${wsPath}?since=${room.lastSeq}`);
    } catch (err) {
      console.error('room.js: cannot open the socket', err);
      scheduleReconnect();
      return;
    }
    ws = sock;
    syncing = false;
    sock.onopen = () => {
      lastFrameAt = Date.now();
      clearInterval(pingTimer);
      pingTimer = setInterval(heartbeat, PING_MS);
    };
    sock.onmessage = (event) => {
      if (sock !== ws) return;
      lastFrameAt = Date.now();
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      if (frame && typeof frame === 'object') handle(frame);
    };
    sock.onclose = (event) => { if (sock === ws) closed(event.code); };
    sock.onerror = () => {}; // a close event always follows
  }

  function heartbeat() {
    if (Date.now() - lastFrameAt > STALE_MS) { // half-open socket: give up on it
      const dead = ws;
      ws = null;
      if (dead) { dead.onclose = null; dead.onmessage = null; dead.close(); }
      closed(1006);
      return;
    }
    send({ type: 'ping' });
  }

  function closed(code) {
    clearInterval(pingTimer);
    pingTimer = null;
    ws = null;
    if (PERMANENT[code]) {
      stopped = true;
      setState('offline', PERMANENT[code]);
      view.setStopped();
      updateStop();
      return;
    }
    if (code === 4413) { // too far behind to replay: a fresh page is the catch-up
      const last = Number(sessionStorage.getItem(reloadKey) || 0);
      if (Date.now() - last > RELOAD_AGAIN_MS) {
        sessionStorage.setItem(reloadKey, String(Date.now()));
        setState('reconnecting', 'Too much happened while you were away: reloading the page.');
        location.reload();
        return;
      }
      stopped = true; // it just reloaded and is still too far behind: let the person decide
      setState('offline', 'This room moves faster than the page can catch up. Reload it to try again.');
      view.setStopped();
      updateStop();
      return;
    }
    if (code === 4429) {
      attempt = Math.max(attempt, 5); // the slowest back-off: a tab must close first
      setState('reconnecting', 'You have too many tabs open on this site; close one and this one reconnects.');
      scheduleReconnect();
      return;
    }
    setState('reconnecting');
    updateStop();
    if (code === 4012) { // the server is restarting on purpose: come back at once
      attempt = 0;
      clearTimeout(reconnectTimer);
      reconnectTimer = setTimeout(connect, Math.random() * 300);
      return;
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (stopped || reconnectTimer) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    attempt += 1;
    const delay = Math.min(BACKOFF_MAX_MS, base * (0.8 + Math.random() * 0.4)); // ±20 % jitter
    reconnectTimer = setTimeout(connect, delay);
  }

  // Back online or back to the tab: don't wait out the backoff.
  const reconnectNow = () => { if (reconnectTimer) { attempt = 0; connect(); } };
  window.addEventListener('online', reconnectNow);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) reconnectNow(); });

  // ---- the outbox: unacked sends, kept across reloads ------------------------------------------
  function loadList(key) {
    try {
      const items = JSON.parse(sessionStorage.getItem(key) || '[]');
      return Array.isArray(items) ? items.filter(Number.isInteger) : [];
    } catch { return []; }
  }
  function saveList(key, items) {
    try { sessionStorage.setItem(key, JSON.stringify(items)); } catch { /* storage off: this page only */ }
  }

  function saveOutbox() {
    try {
      const items = [...room.outbox].map(([client_id, content]) => ({ client_id, content }));
      if (items.length) sessionStorage.setItem(outboxKey, JSON.stringify(items));
      else sessionStorage.removeItem(outboxKey);
    } catch { /* storage full or disabled: the outbox still works for this page */ }
  }

  function loadOutbox() {
    let items = [];
    try { items = JSON.parse(sessionStorage.getItem(outboxKey) || '[]'); } catch { items = []; }
    for (const item of Array.isArray(items) ? items : []) {
      const cid = item && item.client_id;
      if (typeof cid !== 'string' || !/^[0-9a-f-]{36}$/i.test(cid) || typeof item.content !== 'string') continue;
      if (view.hasStored(cid)) continue; // already stored
      room.queueSend(cid, item.content);
      mySends.add(cid);
      view.renderPending(cid, item.content);
    }
    saveOutbox();
  }

  // ---- sending ------------------------------------------------------------------------------------
  function uuid() {
    if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16)); // non-secure contexts
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function submit() {
    const content = view.takeInput();
    if (content == null) return;
    const client_id = uuid();
    const frame = { type: 'send', client_id, content, tools: CLIENT_TOOLS };
    if (new TextEncoder().encode(JSON.stringify(frame)).length > MAX_FRAME_BYTES) {
      view.notice('too_large', 'This message is too large to send.');
      return;
    }
    room.queueSend(client_id, content);
    mySends.add(client_id);
    saveOutbox();
    view.renderPending(client_id, content);
    view.clearInput();
    send(frame); // if the socket is down it stays pending and goes out after `ready`
    view.scrollToBottom();
  }

  // ---- go ------------------------------------------------------------------------------------------
  loadOutbox();
  updateStop();
  setState('connecting');
  view.scrollToBottom();
  connect();

  // For tests and debugging.
  window.roomClient = {
    get lastSeq() { return room.lastSeq; },
    get state() { return state; },
    get outbox() { return [...room.outbox.keys()]; },
    streamText(id) { return room.streamText(id); },
    socket() { return ws; },
    room,
    answered: () => [...answered.keys()],
  };
}
