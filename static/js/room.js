// room.js: the live client of one room. It implements the "Client rules" of docs/protocol.md:
//   1. keep lastSeq; apply a room event only when seq === lastSeq + 1, ignore older ones,
//      and `sync` on a gap;
//   2. keep nextIndex per streaming message; append a delta only when index === nextIndex;
//   3. reconnect with backoff (0.5 s doubling to 10 s, with jitter) and ?since=lastSeq;
//   4. ping every 20 s; sync when pong.latest_seq > lastSeq;
//   5. re-send unacked sends after reconnect with the same client_id (the server is idempotent).
// The page is fully rendered by the server first (it works without JavaScript); this module
// only enhances it. Security: innerHTML is only ever given the server's sanitized `html` field;
// names and any other text go in through textContent. A streaming answer is rendered by
// render.js (markdown-it, then DOMPurify with the server's allowlist), at most once per
// animation frame and only its changed blocks; when it completes, the server's `html` replaces
// it (the same DOM, so nothing moves).

import { StreamView, highlightWithin } from './render.js';

const PING_MS = 20_000;
const STALE_MS = 50_000; // no frame at all for this long: the socket is dead, reconnect
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const TYPING_SEND_MS = 2_000; // send at most one `typing` frame per this interval
const TYPING_SHOW_MS = 3_000; // how long "<name> is typing…" stays without news
const MAX_FRAME_BYTES = 64 * 1024; // CHAT_MAX_FRAME_BYTES default
const NEAR_BOTTOM_PX = 120;

// Close codes after which reconnecting cannot help.
const PERMANENT = {
  4401: 'Not signed in (or your session ended). Log in and reload the page.',
  4403: 'You are not a member of this room. Ask the owner for the invite link.',
  4404: 'This room does not exist any more.',
};
const STATE_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};
const STATUS_LABEL = {
  streaming: 'answering…',
  cancelled: 'stopped',
  interrupted: 'interrupted',
  failed: 'failed',
};

const root = document.getElementById('room');
if (root) start(root);

function start(root) {
  const slug = root.dataset.slug;
  const wsPath = root.dataset.wsPath;
  const me = { id: Number(root.dataset.me), name: root.dataset.meName || 'You' };
  const $ = (id) => document.getElementById(id);
  const els = {
    conn: $('conn'), notices: $('notices'), transcript: $('transcript'), typing: $('typing'),
    composer: $('composer'), input: $('content'), send: $('send'), stop: $('stop'),
    presence: $('presence'), hereNow: $('here-now'), members: $('members'),
  };

  // ---- state ----------------------------------------------------------------------------
  let lastSeq = parseInt(root.dataset.seq, 10) || 0;
  let state = 'connecting';
  let ws = null;
  let attempt = 0; // reconnect attempts since the last `ready`
  let reconnectTimer = null;
  let pingTimer = null;
  let lastFrameAt = 0;
  let syncing = false; // a `sync` is in flight on this socket (cleared by `ready`)
  let stopped = false; // permanently refused: never reconnect
  let lastTypingSent = 0;
  const nextIndex = new Map(); // message id -> next expected delta index
  const streams = new Map(); // message id -> {text, view}: answers still streaming
  const dirty = new Set(); // ids of streams whose text changed since the last render
  let frameRequested = false;
  const running = new Set(); // ids of running turns (Stop is shown while non-empty)
  const typers = new Map(); // user id -> {name, timer}
  const outbox = new Map(); // client_id -> {content}; unacked sends
  const outboxKey = `roomchat:outbox:${slug}`;

  // Streaming messages rendered by the server: their next delta index and running turn;
  // interrupted and failed answers get their retry button (after addRetry is defined below).
  queueMicrotask(() => {
    for (const li of els.transcript.querySelectorAll('li.msg[data-status="interrupted"], li.msg[data-status="failed"]')) addRetry(li);
    updateQueuePositions();
    setupLoadEarlier();
  });
  for (const li of els.transcript.querySelectorAll('li.msg[data-status="streaming"]')) {
    nextIndex.set(Number(li.dataset.id), parseInt(li.dataset.nextIndex, 10) || 0);
    if (li.dataset.turnId) running.add(Number(li.dataset.turnId));
    const body = li.querySelector(':scope > .body');
    startStream(Number(li.dataset.id), body, body.dataset.text || '');
    delete body.dataset.text;
  }

  // ---- small DOM helpers ------------------------------------------------------------------
  const byId = (id) => document.getElementById(`m-${id}`);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  };
  const bodyOf = (li) => li.querySelector(':scope > .body');
  const showHtml = (body, html) => {
    body.innerHTML = html || ''; // sanitized by the server (rooms/rendering.py)
    highlightWithin(body);
  };
  const setStatusLabel = (li, text, title) => {
    const span = li.querySelector('.meta .status');
    if (!span) return;
    span.textContent = text || '';
    if (title) span.title = title; else span.removeAttribute('title');
  };

  function localiseTime(time) {
    const d = new Date(time.dateTime);
    if (Number.isNaN(d.getTime())) return;
    const sameDay = d.toDateString() === new Date().toDateString();
    const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    time.textContent = sameDay ? hm : `${d.toLocaleDateString()} ${hm}`;
    time.title = d.toLocaleString();
  }

  function nearBottom() {
    const doc = document.documentElement;
    return window.innerHeight + window.scrollY >= doc.scrollHeight - NEAR_BOTTOM_PX;
  }
  function scrollToBottom() {
    window.scrollTo(0, document.documentElement.scrollHeight);
  }

  function setState(next, detail) {
    state = next;
    els.conn.dataset.state = next;
    els.conn.textContent = detail ? `${STATE_TEXT[next]}: ${detail}` : STATE_TEXT[next];
    document.body.dataset.wsState = next;
  }

  function notice(code, detail) {
    const box = el('div', 'notice');
    box.dataset.code = code;
    box.append(el('strong', null, code), document.createTextNode(` ${detail || ''} `));
    const close = el('button', 'dismiss', '×');
    close.type = 'button';
    close.setAttribute('aria-label', 'Dismiss');
    close.addEventListener('click', () => box.remove());
    box.append(close);
    els.notices.append(box);
    while (els.notices.children.length > 3) els.notices.firstElementChild.remove();
  }

  // ---- building messages (same markup as templates/room.html) -----------------------------
  function authorName(m) {
    if (m.author) return m.author.name;
    return { system: 'System', tool: 'Tool' }[m.role] || 'Assistant';
  }

  function buildMessage(m) {
    const role = /^[a-z_]+$/.test(m.role) ? m.role : 'user';
    const li = el('li', `msg role-${role}`);
    if (m.author && m.author.id === me.id) li.classList.add('mine');
    li.id = `m-${m.id}`;
    li.dataset.id = m.id;
    if (m.seq != null) li.dataset.seq = m.seq;
    li.dataset.status = m.status;
    if (m.status === 'streaming') li.setAttribute('aria-busy', 'true'); // read it once, when done
    if (m.turn_id) li.dataset.turnId = m.turn_id;
    if (m.client_id) li.dataset.clientId = m.client_id;
    if (m.author) li.dataset.authorId = m.author.id;
    const avatar = el('span', 'avatar', initials(m.author ? m.author.name : 'AI'));
    avatar.setAttribute('aria-hidden', 'true');
    avatar.style.setProperty('--hue', m.author ? (m.author.id * 47) % 360 : 265);
    const meta = el('div', 'meta');
    const time = el('time');
    time.dateTime = m.created_at || new Date().toISOString();
    localiseTime(time);
    meta.append(el('span', 'author', authorName(m)), ' ', time, ' ',
      el('span', 'status', STATUS_LABEL[m.status] || ''));
    const body = el('div', 'body');
    if (m.status === 'streaming') {
      body.classList.add('streaming');
      // Keep text we may already hold (a snapshot before the event on a slow path).
      startStream(m.id, body, streams.get(m.id)?.text || m.content || '');
    } else {
      showHtml(body, m.html);
    }
    li.append(avatar, meta, body);
    return li;
  }

  // ---- streaming answers: text in, rendered markdown out, once per animation frame ----------
  function startStream(id, body, text) {
    const stream = { text, view: new StreamView(body) };
    streams.set(id, stream);
    stream.view.update(text);
    dirty.delete(id);
  }

  function setStreamText(id, text) {
    const stream = streams.get(id);
    if (!stream) return;
    stream.text = text;
    dirty.add(id);
    if (frameRequested) return;
    frameRequested = true;
    // Hidden tabs get no animation frames; catch up slowly there instead.
    if (document.hidden) setTimeout(renderStreams, 250); else requestAnimationFrame(renderStreams);
  }

  function renderStreams() {
    frameRequested = false;
    const stick = nearBottom(); // decide before the DOM grows
    for (const id of dirty) streams.get(id)?.view.update(streams.get(id).text);
    dirty.clear();
    if (stick) scrollToBottom();
  }

  function endStream(id) {
    streams.delete(id);
    dirty.delete(id);
  }

  function initials(name) {
    const parts = name.replace('(', ' ').split(/\s+/).filter((p) => /^[\p{L}\p{N}]/u.test(p));
    return (parts.slice(0, 2).map((p) => p[0]).join('') || '?').toUpperCase();
  }

  // Insert in seq order; optimistic (pending) messages always stay at the bottom.
  function insertMessage(li) {
    const seq = Number(li.dataset.seq);
    let after = els.transcript.lastElementChild;
    while (after && (after.classList.contains('pending') ||
      (after.dataset.seq && Number(after.dataset.seq) > seq))) {
      after = after.previousElementSibling;
    }
    els.transcript.insertBefore(li, after ? after.nextElementSibling : els.transcript.firstChild);
    $('empty-hint')?.remove();
  }

  // ---- room events --------------------------------------------------------------------------
  function onMessage(m) {
    const mine = Boolean(m.client_id && m.author && m.author.id === me.id);
    // The element to replace: a duplicate, or our own optimistic copy (matched by client_id).
    const old = byId(m.id) || (mine ? $(`pending-${m.client_id}`) : null);
    if (mine && outbox.delete(m.client_id)) saveOutbox(); // stored: no need to re-send it
    if (m.status === 'hidden') { old?.remove(); return; }
    if (old && old.dataset.status === 'streaming' && m.status !== 'streaming') endStream(m.id);
    const li = buildMessage(m);
    if (m.status === 'streaming') {
      if (!nextIndex.has(m.id)) nextIndex.set(m.id, 0);
      li.dataset.nextIndex = nextIndex.get(m.id);
    }
    old?.remove();
    insertMessage(li);
    if (m.author) clearTyping(m.author.id);
  }

  function onMessageUpdate(m) {
    const li = byId(m.id);
    if (!li) return; // outside the loaded window
    if (m.status === 'hidden') { li.remove(); nextIndex.delete(m.id); endStream(m.id); return; }
    li.dataset.status = m.status;
    setStatusLabel(li, STATUS_LABEL[m.status]);
    li.querySelector('.retry')?.remove();
    if (m.status === 'streaming') { // retried: the text so far, then deltas (a sync fills the rest)
      const body = bodyOf(li);
      body.className = 'body streaming';
      li.setAttribute('aria-busy', 'true');
      startStream(m.id, body, m.content);
      nextIndex.delete(m.id);
      return;
    }
    addRetry(li);
    endStream(m.id);
    const body = bodyOf(li);
    body.className = 'body';
    showHtml(body, m.html); // the same DOM as the streamed one, now final
    li.removeAttribute('aria-busy');
    nextIndex.delete(m.id);
    delete li.dataset.nextIndex;
  }

  // An interrupted or failed answer can be continued by any member.
  function addRetry(li) {
    const turnId = Number(li.dataset.turnId);
    if (!turnId || !['interrupted', 'failed'].includes(li.dataset.status)) return;
    if (li.querySelector('.retry')) return;
    const btn = el('button', 'retry link small', 'retry');
    btn.type = 'button';
    btn.addEventListener('click', () => { btn.disabled = true; send({ type: 'retry', turn_id: turnId }); });
    li.querySelector('.meta').append(' ', btn);
  }

  // "queued #n": where each waiting question stands (the running answer is ahead of #1).
  function updateQueuePositions() {
    const waiting = els.transcript.querySelectorAll('li.msg[data-turn-status="queued"]');
    waiting.forEach((li, i) => setStatusLabel(li, `queued #${i + 1}`));
  }

  // "Load earlier": fetch older rows (server-rendered, same markup) and put them on top.
  function setupLoadEarlier() {
    const link = document.getElementById('load-earlier');
    if (!link) return;
    link.addEventListener('click', async (event) => {
      event.preventDefault();
      link.setAttribute('aria-busy', 'true');
      try {
        const response = await fetch(link.href, { credentials: 'same-origin' });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const tpl = document.createElement('template');
        tpl.innerHTML = await response.text(); // our own server-rendered, sanitized rows
        const more = tpl.content.querySelector('.earlier-marker');
        if (more) more.remove();
        const rows = [...tpl.content.querySelectorAll('li.msg')].filter((li) => !document.getElementById(li.id));
        for (const li of rows) highlightWithin(li);
        els.transcript.prepend(...rows);
        for (const li of rows) addRetry(li);
        if (!more || !rows.length) link.parentElement.remove();
        else link.href = link.href.replace(/before=\d+/, `before=${rows[0].dataset.seq}`);
      } catch (err) {
        notice('load_failed', `Could not load earlier messages (${err.message}).`);
      } finally {
        link.removeAttribute('aria-busy');
      }
    });
  }

  function onTurn(t) {
    if (t.status === 'running') running.add(t.id); else running.delete(t.id);
    updateStop();
    const answer = t.message_id ? byId(t.message_id) : null;
    if (answer && t.recovering) setStatusLabel(answer, 'recovering…');
    else if (answer && t.status === 'running') setStatusLabel(answer, STATUS_LABEL.streaming);
    const trigger = t.trigger_message_id ? byId(t.trigger_message_id) : null;
    if (!trigger) return;
    const before = trigger.dataset.turnStatus;
    trigger.dataset.turnStatus = t.status;
    trigger.querySelector('.withdraw')?.remove();
    if (t.status === 'queued') {
      setStatusLabel(trigger, 'queued');
      if (trigger.classList.contains('mine')) { // let the author withdraw a queued question
        const btn = el('button', 'withdraw link small', 'withdraw');
        btn.type = 'button';
        btn.addEventListener('click', () => send({ type: 'cancel', turn_id: t.id }));
        trigger.querySelector('.meta').append(' ', btn);
      }
    } else if (t.status === 'cancelled' && before === 'queued') {
      setStatusLabel(trigger, 'withdrawn');
    } else if (t.status === 'failed' && !t.message_id) {
      setStatusLabel(trigger, 'no answer', t.error || undefined);
    } else {
      setStatusLabel(trigger, '');
    }
    updateQueuePositions();
  }

  function onRoomEvent(f) {
    if (!Number.isInteger(f.seq) || f.seq <= lastSeq) return; // already have it
    if (f.seq > lastSeq + 1) { requestSync(); return; } // a gap: fetch what we missed
    lastSeq = f.seq;
    root.dataset.seq = lastSeq;
    try {
      if (f.type === 'message') onMessage(f.message);
      else if (f.type === 'message_update') onMessageUpdate(f.message);
      else if (f.type === 'turn') onTurn(f.turn);
    } catch (err) {
      console.error('room.js: could not apply event', f, err);
    }
  }

  // ---- streaming ----------------------------------------------------------------------------
  function onDelta(f) {
    const li = byId(f.message_id);
    if (!li) { requestSync(); return; } // we missed its `message` event
    if (li.dataset.status !== 'streaming') return; // already final
    const want = nextIndex.get(f.message_id) ?? 0;
    if (f.index < want) return; // a duplicate
    const stream = streams.get(f.message_id);
    if (f.index > want || !stream) { requestSync(); return; } // a lost delta: the snapshot will fix it
    setStreamText(f.message_id, stream.text + f.text);
    nextIndex.set(f.message_id, want + 1);
    li.dataset.nextIndex = want + 1;
  }

  function onSnapshot(f) {
    let li = byId(f.message_id);
    if (!li) {
      li = buildMessage({ id: f.message_id, role: 'assistant', author: null, content: '',
        html: '', status: 'streaming', created_at: new Date().toISOString() });
      insertMessage(li);
    }
    if (li.dataset.status !== 'streaming') return;
    if (f.next_index < (nextIndex.get(f.message_id) ?? 0)) return; // older than what we have
    setStreamText(f.message_id, f.content);
    nextIndex.set(f.message_id, f.next_index);
    li.dataset.nextIndex = f.next_index;
  }

  // ---- answers: ack, error, pong, ready ------------------------------------------------------
  function onAck(f) {
    if (outbox.delete(f.client_id)) saveOutbox();
    const pending = $(`pending-${f.client_id}`);
    if (!pending) return; // the `message` event came first and already replaced it
    const real = byId(f.message_id);
    // Already shown (the event arrived), or stored before our transcript and outside it.
    if ((real && real !== pending) || f.seq <= lastSeq) { pending.remove(); return; }
    pending.id = `m-${f.message_id}`; // the `message` event will replace it in place
    pending.dataset.id = f.message_id;
    pending.dataset.seq = f.seq;
    pending.dataset.status = 'complete';
    pending.classList.remove('pending');
    setStatusLabel(pending, '');
  }

  function onError(f) {
    if (f.ref != null && outbox.has(String(f.ref))) {
      markFailed(String(f.ref), `${f.code}: ${f.detail}`);
    }
    notice(f.code, f.detail);
  }

  function onReady(f) {
    lastSeq = Math.max(lastSeq, f.seq);
    root.dataset.seq = lastSeq;
    syncing = false;
    attempt = 0;
    setState('live');
    for (const [client_id, { content }] of outbox) send({ type: 'send', client_id, content });
  }

  function requestSync() {
    if (syncing || !isOpen()) return;
    syncing = true;
    send({ type: 'sync', since: lastSeq });
  }

  // ---- ephemeral: presence, typing ---------------------------------------------------------
  function onPresence(list) {
    const users = [...new Map(list.map((u) => [u.id, u])).values()]; // one entry per person
    els.presence.replaceChildren(...users.map((u) =>
      el('li', u.id === me.id ? 'me' : '', u.id === me.id ? `${u.name} (you)` : u.name)));
    els.hereNow.hidden = users.length === 0;
    const here = new Set(users.map((u) => String(u.id)));
    for (const li of els.members?.querySelectorAll('li[data-user-id]') || []) {
      li.classList.toggle('online', here.has(li.dataset.userId));
    }
  }

  function onTyping(user) {
    if (!user || user.id === me.id) return;
    clearTimeout(typers.get(user.id)?.timer);
    typers.set(user.id, { name: user.name, timer: setTimeout(() => clearTyping(user.id), TYPING_SHOW_MS) });
    renderTyping();
  }
  function clearTyping(userId) {
    const t = typers.get(userId);
    if (!t) return;
    clearTimeout(t.timer);
    typers.delete(userId);
    renderTyping();
  }
  function renderTyping() {
    const names = [...typers.values()].map((t) => t.name);
    els.typing.textContent = names.length === 0 ? ''
      : names.length === 1 ? `${names[0]} is typing…`
      : names.length === 2 ? `${names[0]} and ${names[1]} are typing…`
      : 'Several people are typing…';
  }

  // ---- frame dispatch -------------------------------------------------------------------------
  function handle(f) {
    const stick = nearBottom(); // decide before the DOM grows
    switch (f.type) {
      case 'message': case 'message_update': case 'turn': onRoomEvent(f); break;
      case 'delta': onDelta(f); break;
      case 'snapshot': onSnapshot(f); break;
      case 'ready': onReady(f); break;
      case 'ack': onAck(f); break;
      case 'error': onError(f); break;
      case 'pong': if (f.latest_seq > lastSeq) requestSync(); break;
      case 'presence': onPresence(f.users || []); break;
      case 'typing': onTyping(f.user); break;
      default: break; // unknown frame types are ignored (forward compatible)
    }
    if (stick) scrollToBottom();
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
      sock = new WebSocket(`${scheme}://${location.host}${wsPath}?since=${lastSeq}`);
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
      els.input.disabled = true;
      els.send.disabled = true;
      updateStop();
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
  function saveOutbox() {
    try {
      const items = [...outbox].map(([client_id, { content }]) => ({ client_id, content }));
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
      if (els.transcript.querySelector(`[data-client-id="${cid}"]`)) continue; // already stored
      outbox.set(cid, { content: item.content });
      renderPending(cid, item.content);
    }
    saveOutbox();
  }

  function renderPending(cid, content) {
    const li = el('li', 'msg role-user mine pending');
    li.id = `pending-${cid}`;
    li.dataset.clientId = cid;
    li.dataset.status = 'pending';
    li.dataset.authorId = me.id;
    const time = el('time');
    time.dateTime = new Date().toISOString();
    localiseTime(time);
    const meta = el('div', 'meta');
    meta.append(el('span', 'author', me.name), ' ', time, ' ', el('span', 'status', 'sending…'));
    li.append(meta, el('div', 'body plain', content));
    els.transcript.append(li);
    $('empty-hint')?.remove();
    return li;
  }

  function markFailed(cid, why) {
    outbox.delete(cid);
    saveOutbox();
    const li = $(`pending-${cid}`);
    if (!li) return;
    li.classList.remove('pending');
    li.classList.add('failed');
    li.dataset.status = 'failed';
    setStatusLabel(li, 'not sent', why);
  }

  // ---- the composer -----------------------------------------------------------------------------
  function uuid() {
    if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16)); // non-secure contexts
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function submit() {
    if (stopped) return;
    const content = els.input.value.replace(/\s+$/, ''); // keep leading indentation
    if (!content.trim()) return;
    const client_id = uuid();
    const frame = { type: 'send', client_id, content };
    if (new TextEncoder().encode(JSON.stringify(frame)).length > MAX_FRAME_BYTES) {
      notice('too_large', 'This message is too large to send.');
      return;
    }
    outbox.set(client_id, { content });
    saveOutbox();
    renderPending(client_id, content);
    els.input.value = '';
    send(frame); // if the socket is down it stays pending and goes out after `ready`
    scrollToBottom();
  }

  function updateStop() {
    els.stop.hidden = running.size === 0 || stopped;
  }

  els.composer.addEventListener('submit', (event) => {
    event.preventDefault(); // with JavaScript on, the socket replaces the form POST
    submit();
  });
  els.input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing &&
        !event.altKey && !event.metaKey && !event.ctrlKey) {
      event.preventDefault();
      submit();
    }
  });
  els.input.addEventListener('input', () => {
    const now = Date.now();
    if (els.input.value && now - lastTypingSent >= TYPING_SEND_MS && send({ type: 'typing' })) {
      lastTypingSent = now;
    }
  });
  els.stop.addEventListener('click', () => {
    const turnId = [...running].pop();
    if (turnId != null) send({ type: 'cancel', turn_id: turnId });
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !els.stop.hidden) els.stop.click();
  });

  // ---- go ------------------------------------------------------------------------------------------
  for (const time of els.transcript.querySelectorAll('time[datetime]')) localiseTime(time);
  highlightWithin(els.transcript);
  loadOutbox();
  updateStop();
  setState('connecting');
  scrollToBottom();
  connect();

  // For tests and debugging.
  window.roomClient = {
    get lastSeq() { return lastSeq; },
    get state() { return state; },
    get outbox() { return [...outbox.keys()]; },
    streamText(id) { return streams.get(id)?.text; },
    socket() { return ws; },
  };
}
