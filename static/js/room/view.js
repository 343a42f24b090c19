// room/view.js: the DOM of one room page. It shows what room/state.js says (the changes of a
// frame) and tells room.js what the person does (send, stop, retry, withdraw); it holds no
// protocol state of its own beyond what is on screen.
//
// The page is fully rendered by the server first (it works without JavaScript); this module
// only enhances it. Security: innerHTML is only ever given the server's sanitized `html` field
// (and our own server-rendered rows for "Load earlier"); names and any other text go in
// through textContent. A streaming answer is rendered by render.js (markdown-it, then
// DOMPurify with the server's allowlist), at most once per animation frame and only its
// changed blocks; when it completes, the server's `html` replaces it (the same DOM, so
// nothing moves).

import { StreamView, highlightWithin } from '../render.js';
import { chooseInput, isMine } from './tools.js';

const TYPING_SHOW_MS = 3_000; // how long "<name> is typing…" stays without news
const NEAR_BOTTOM_PX = 120;

const STATE_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};
const MODERATED = { hidden: 'hidden by a moderator', deleted: 'deleted by a moderator' };

const STATUS_LABEL = {
  streaming: 'answering…',
  cancelled: 'stopped',
  interrupted: 'interrupted',
  failed: 'failed',
};

// A tool call's state badge (waiting_client has its own words: whose browser, or a choice).
const CALL_STATE_LABEL = {
  running: 'running…',
  done: 'done',
  error: 'error',
  denied: 'denied',
  interrupted: 'outcome unknown',
  awaiting_approval: 'waiting for approval',
};

// 120 ms, 1.3 s, 2 min 5 s (rooms/templatetags/room_tools.py's duration_text).
export function durationText(seconds) {
  const s = Math.max(seconds, 0);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const total = Math.round(s);
  const min = Math.floor(total / 60);
  const rest = total % 60;
  return rest ? `${min} min ${rest} s` : `${min} min`;
}

// How long a finished call ran ('' while it runs, or if it never started).
function callDuration(call) {
  if (!call.started_at || !call.finished_at) return '';
  const ms = Date.parse(call.finished_at) - Date.parse(call.started_at);
  return Number.isNaN(ms) ? '' : durationText(ms / 1000);
}

// A tool's input or output as indented JSON text (shown with textContent: never HTML).
function prettyJson(value) {
  try { return JSON.stringify(value, null, 2) ?? String(value); } catch { return String(value); }
}

// `actions`: {send(frame), submit(content), stop(), typing(), callsOf(messageId),
// decide(callId, approved, reason), choose(callId, option)} from room.js.
// `me`: {id, name, canModerate}.
export function createRoomView(root, me, actions) {
  const $ = (id) => document.getElementById(id);
  const els = {
    conn: $('conn'), notices: $('notices'), transcript: $('transcript'), typing: $('typing'),
    composer: $('composer'), input: $('content'), send: $('send'), stop: $('stop'),
    presence: $('presence'), hereNow: $('here-now'), members: $('members'),
    notes: $('notes'), notesCount: $('notes-count'), notesPanel: $('room-notes'),
  };
  const streams = new Map(); // message id -> {text, view}: answers still streaming
  const dirty = new Set(); // ids of streams whose text changed since the last render
  let frameRequested = false;
  const typers = new Map(); // user id -> {name, timer}

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

  function setConnection(next, detail) {
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

  // ---- what the server rendered ------------------------------------------------------------
  // The messages on the page, for RoomState.seed; the streaming ones start streaming here.
  function readTranscript() {
    const seen = [];
    for (const li of els.transcript.querySelectorAll('li.msg[data-id]')) {
      const id = Number(li.dataset.id);
      const status = li.dataset.status;
      const m = { id, seq: Number(li.dataset.seq), role: /role-([a-z_]+)/.exec(li.className)?.[1], status,
        turnId: li.dataset.turnId ? Number(li.dataset.turnId) : null };
      if (status === 'streaming') {
        const body = bodyOf(li);
        m.content = body.dataset.text || '';
        m.nextIndex = parseInt(li.dataset.nextIndex, 10) || 0;
        startStream(id, body, m.content);
        delete body.dataset.text;
      }
      seen.push(m);
    }
    return seen;
  }

  // ---- building messages (same markup as templates/includes/message.html) -----------------
  function authorName(m) {
    if (m.author) return m.author.name;
    return { system: 'System', tool: 'Tool' }[m.role] || 'Assistant';
  }

  function initials(name) {
    const parts = name.replace('(', ' ').split(/\s+/).filter((p) => /^[\p{L}\p{N}]/u.test(p));
    return (parts.slice(0, 2).map((p) => p[0]).join('') || '?').toUpperCase();
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
    if (MODERATED[m.status]) {
      body.classList.add('moderated');
      body.textContent = MODERATED[m.status];
    } else if (m.status === 'streaming') {
      body.classList.add('streaming');
      startStream(m.id, body, m.content || '');
    } else {
      showHtml(body, m.html);
    }
    li.append(avatar, meta);
    const calls = actions.callsOf ? actions.callsOf(m.id) : [];
    if (calls.length) li.append(el('div', 'tool-calls'));
    li.append(body);
    for (const call of calls) placeCall(li, call);
    addMessageTools(li, m.id);
    return li;
  }

  // Hide / unhide / delete (owners and moderators) and report: the server's own markup, cloned.
  function addMessageTools(li, id) {
    const tpl = document.getElementById('msg-tools-template');
    if (!tpl || li.querySelector('.msg-tools')) return;
    const tools = tpl.content.firstElementChild.cloneNode(true);
    for (const input of tools.querySelectorAll('input[name="message_id"]')) input.value = id;
    const reason = tools.querySelector('input[name="reason"]');
    if (reason) { reason.id = `report-${id}`; tools.querySelector('label[for]')?.setAttribute('for', reason.id); }
    li.append(tools);
  }

  // A moderator hid or deleted a message: its place stays, its text goes.
  function showModerated(li, m) {
    endStream(m.id);
    li.dataset.status = m.status;
    li.removeAttribute('aria-busy');
    setStatusLabel(li, '');
    li.querySelector('.retry')?.remove();
    li.querySelector('.tool-calls')?.remove();
    const body = bodyOf(li);
    body.className = 'body moderated';
    body.textContent = MODERATED[m.status];
  }

  // A room_update: locked (read-only) and slow mode.
  function showRoomState({ room }) {
    const banner = document.getElementById('locked-banner');
    if (banner) banner.hidden = !room.locked;
    if (!root.dataset.canModerate) { els.input.disabled = room.locked; els.send.disabled = room.locked; }
    const slow = document.getElementById('slow-banner');
    if (slow) {
      slow.hidden = !room.slow_mode_seconds;
      const secs = document.getElementById('slow-seconds');
      if (secs) secs.textContent = String(room.slow_mode_seconds);
    }
  }

  // A member_update about me: muted or read-only means the composer cannot send.
  function showMember({ member }) {
    if (member.user.id !== me.id) return;
    const silenced = member.muted || member.role === 'viewer';
    if (silenced) notice(member.muted ? 'muted' : 'read_only', member.muted ? 'A moderator muted you in this room.' : 'You can now only read this room.');
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

  // ---- tool calls: a card per call inside its assistant message ----------------------------------
  // The same markup as templates/includes/tool_call.html. Collapsed by default (a <details>);
  // the input, output and error are the model's or a tool's: text only, never HTML.
  const names = new Map(); // user id -> name, for "waiting for <name>"
  function personName(id, fallback) {
    if (id === me.id) return me.name;
    if (names.has(id)) return names.get(id);
    const author = els.transcript.querySelector(`li.msg[data-author-id="${Number(id)}"] .meta .author`);
    const member = els.members?.querySelector(`li[data-user-id="${Number(id)}"]`);
    const name = author?.textContent || member?.firstChild?.textContent?.trim() || fallback || '';
    if (name) names.set(id, name);
    return name || 'the asker';
  }

  function callStateLabel(call) {
    if (call.state !== 'waiting_client') return CALL_STATE_LABEL[call.state] || call.state;
    const mine = call.initiator_id === me.id;
    const who = personName(call.initiator_id, call.initiator_name);
    if (call.name === 'choose') return mine ? 'waiting for your choice' : `waiting for ${who} to choose`;
    return mine ? 'waiting for your browser' : `waiting for ${who}'s browser`;
  }

  // Collapsed, except a call that asks first: whoever decides should see what it would do.
  const openAtFirst = (call) => call.state === 'awaiting_approval';

  function buildToolCard(call, open) {
    const card = el('div', 'tool-call');
    card.id = `call-${call.id}`;
    card.dataset.callId = call.id;
    card.dataset.state = call.state;
    card.dataset.kind = call.kind;
    const details = el('details', 'tool-details');
    details.open = Boolean(open);
    const summary = el('summary');
    summary.append(el('span', 'tool-name', call.name));
    if (call.kind === 'mcp') {
      const kind = el('span', 'tool-kind', 'MCP');
      kind.title = 'A tool of an MCP server';
      summary.append(' ', kind);
    }
    summary.append(' ', el('span', 'tool-state', callStateLabel(call)));
    const took = callDuration(call);
    if (took) summary.append(' ', el('span', 'tool-duration', took));
    const io = el('div', 'tool-io');
    io.append(el('div', 'tool-label', 'Input'), el('pre', 'tool-input', prettyJson(call.input)));
    if (call.output != null) io.append(el('div', 'tool-label', 'Output'), el('pre', 'tool-output', prettyJson(call.output)));
    if (call.error) io.append(el('p', 'tool-error', call.error));
    if (call.decided_by) {
      io.append(el('p', 'tool-decided', `${call.state === 'denied' ? 'Denied' : 'Approved'} by ${call.decided_by.name}`));
    }
    details.append(summary, io);
    card.append(details);
    if (call.progress) card.append(agentProgress(call.progress));
    const acts = callActions(call);
    if (acts) card.append(acts);
    return card;
  }

  // An agent call's child run, live: a link to the agent's room, its status, its own calls and
  // the end of its answer so far (text only; the agent's room shows it rendered).
  function agentProgress(p) {
    const box = el('div', 'agent-progress');
    box.dataset.status = p.status;
    const head = el('p', 'agent-head');
    const link = el('a', 'agent-room', p.title);
    link.href = `/r/${encodeURIComponent(p.room)}/`;
    head.append(link, ' ', el('span', 'agent-status', p.status));
    box.append(head);
    if (p.calls && p.calls.length) {
      const list = el('ul', 'agent-calls');
      for (const c of p.calls) {
        const li = el('li');
        li.dataset.state = c.state;
        li.append(el('span', 'tool-name', c.name), ` ${c.state}`);
        list.append(li);
      }
      box.append(list);
    }
    if (p.text) box.append(el('p', 'agent-text', `${p.truncated ? '…' : ''}${p.text}`));
    return box;
  }

  // What a person can do about a call now: approve or deny it, pick an option, or just wait.
  function callActions(call) {
    const box = el('div', 'tool-actions');
    if (call.state === 'awaiting_approval') {
      const mayDecide = call.initiator_id === me.id || me.canModerate;
      if (!mayDecide) {
        const who = personName(call.initiator_id, call.initiator_name);
        box.append(el('p', 'tool-wait', `Waiting for approval by ${who} or a moderator`));
        return box;
      }
      const approve = el('button', 'approve small', 'Approve');
      const reason = el('input', 'deny-reason');
      reason.type = 'text';
      reason.maxLength = 500;
      reason.placeholder = 'Reason (optional)';
      reason.setAttribute('aria-label', 'Reason for denying (optional)');
      const deny = el('button', 'deny small danger', 'Deny');
      const buttons = [approve, deny];
      const decide = (approved) => {
        for (const b of buttons) b.disabled = true;
        const why = approved ? null : reason.value.trim() || null;
        if (!actions.decide(call.id, approved, why)) for (const b of buttons) b.disabled = false;
      };
      for (const b of buttons) b.type = 'button';
      approve.addEventListener('click', () => decide(true));
      deny.addEventListener('click', () => decide(false));
      reason.addEventListener('keydown', (event) => {
        if (event.key === 'Enter') { event.preventDefault(); decide(false); }
      });
      box.append(el('p', 'tool-wait', `Allow the assistant to run ${call.name} with this input?`));
      const row = el('div', 'tool-buttons');
      row.append(approve, reason, deny);
      box.append(row);
      return box;
    }
    if (call.state === 'waiting_client' && call.name === 'choose') {
      const input = chooseInput(call.input);
      if (!input) return null;
      box.append(el('p', 'tool-question', input.question));
      if (!isMine(call, me.id)) return box;
      const row = el('div', 'tool-buttons choices');
      const buttons = input.options.map((option) => {
        const b = el('button', 'choice small secondary', option);
        b.type = 'button';
        b.addEventListener('click', () => {
          for (const other of buttons) other.disabled = true;
          b.classList.add('picked');
          if (!actions.choose(call.id, option)) for (const other of buttons) other.disabled = false;
        });
        return b;
      });
      row.append(...buttons);
      box.append(row);
      return box;
    }
    return null;
  }

  // Put a call's card in its message (replacing its old card, keeping it open if it was).
  function placeCall(li, call) {
    let list = li.querySelector(':scope > .tool-calls');
    if (!list) {
      list = el('div', 'tool-calls');
      li.insertBefore(list, bodyOf(li));
    }
    const old = list.querySelector(`:scope > [data-call-id="${CSS.escape(call.id)}"]`);
    const card = buildToolCard(call, old ? old.querySelector('details')?.open : openAtFirst(call));
    if (old) old.replaceWith(card); else list.append(card);
    showWaiting(li);
  }

  // A streaming answer whose turn waits on a person says so instead of "answering…".
  function showWaiting(li) {
    if (li.dataset.status !== 'streaming') return;
    const waiting = li.querySelector(WAITING_CARDS);
    const label = li.querySelector('.meta .status')?.textContent;
    if (waiting) setStatusLabel(li, 'waiting…');
    else if (label === 'waiting…') setStatusLabel(li, STATUS_LABEL.streaming);
  }

  // (an agent call that runs waits on the agent's room, as a parked turn does on a person)
  const WAITING_CARDS = '.tool-call:is([data-state="awaiting_approval"], [data-state="waiting_client"], '
    + '[data-kind="agent"][data-state="running"])';
  function showCall({ call }) {
    const li = byId(call.message_id);
    if (li) placeCall(li, call); // else: outside the loaded window
  }

  // A short notice on a card (a refused approval or answer); it goes with the next change.
  function callNotice(callId, text) {
    const card = document.getElementById(`call-${callId}`);
    if (!card) return false;
    card.querySelector('.tool-notice')?.remove();
    const p = el('p', 'tool-notice', text);
    p.setAttribute('role', 'alert');
    card.append(p);
    for (const b of card.querySelectorAll('.tool-actions button')) b.disabled = false;
    return true;
  }

  // The calls the server rendered (with their data as JSON), for RoomState.seedCall; each card
  // is built again here so it has its buttons.
  function readCalls(scope) {
    const calls = [];
    for (const card of scope.querySelectorAll('.tool-call[data-call-id]')) {
      let call;
      try {
        call = JSON.parse(card.querySelector('script[type="application/json"]')?.textContent || 'null');
      } catch { call = null; }
      if (!call || typeof call !== 'object') continue;
      if (call.initiator_name && call.initiator_id != null) names.set(call.initiator_id, call.initiator_name);
      calls.push(call);
      card.replaceWith(buildToolCard(call, openAtFirst(call)));
    }
    for (const li of scope.querySelectorAll('li.msg[data-status="streaming"]')) showWaiting(li);
    return calls;
  }

  // ---- the room's notes panel ---------------------------------------------------------------------
  function showNote({ note }) {
    if (!els.notes || document.getElementById(`note-${note.id}`)) return;
    const li = el('li', 'note');
    li.id = `note-${note.id}`;
    li.dataset.noteId = note.id;
    const time = el('time');
    time.dateTime = note.created_at || new Date().toISOString();
    localiseTime(time);
    li.append(time, ' ', el('span', 'note-text', note.text));
    els.notes.append(li);
    els.notesCount.textContent = els.notes.children.length;
    if (els.notesPanel.hidden) { els.notesPanel.hidden = false; els.notesPanel.open = true; } // the first one
    li.classList.add('fresh');
    setTimeout(() => li.classList.remove('fresh'), 2_000);
    els.notes.scrollTop = els.notes.scrollHeight;
  }

  // ---- the changes of room/state.js ------------------------------------------------------------
  function showMessage({ message: m, mine, nextIndex }) {
    // The element to replace: a duplicate, or our own optimistic copy (matched by client_id).
    const old = byId(m.id) || (mine ? $(`pending-${m.client_id}`) : null);
    if (old && old.dataset.status === 'streaming' && m.status !== 'streaming') endStream(m.id);
    const li = buildMessage(m);
    if (m.status === 'streaming') li.dataset.nextIndex = nextIndex ?? 0;
    old?.remove();
    insertMessage(li);
    if (m.author) clearTyping(m.author.id);
  }

  function updateMessage({ message: m }) {
    const li = byId(m.id);
    if (!li) return; // outside the loaded window
    if (MODERATED[m.status]) { showModerated(li, m); return; }
    if (MODERATED[li.dataset.status]) { // unhidden: the whole row again, with its text
      const fresh = buildMessage(m);
      li.replaceWith(fresh);
      return;
    }
    li.dataset.status = m.status;
    setStatusLabel(li, STATUS_LABEL[m.status]);
    li.querySelector('.retry')?.remove();
    const body = bodyOf(li);
    if (m.status === 'streaming') { // retried: the text so far, then deltas (a sync fills the rest)
      body.className = 'body streaming';
      li.setAttribute('aria-busy', 'true');
      startStream(m.id, body, m.content);
      return;
    }
    addRetry(li);
    endStream(m.id);
    body.className = 'body';
    showHtml(body, m.html); // the same DOM as the streamed one, now final
    li.removeAttribute('aria-busy');
    delete li.dataset.nextIndex;
  }

  function showText({ id, text, nextIndex }) {
    setStreamText(id, text);
    const li = byId(id);
    if (li) li.dataset.nextIndex = nextIndex;
  }

  // An interrupted or failed answer can be continued by any member.
  function addRetry(li) {
    const turnId = Number(li.dataset.turnId);
    if (!turnId || !['interrupted', 'failed'].includes(li.dataset.status)) return;
    if (li.querySelector('.retry')) return;
    const btn = el('button', 'retry link small', 'retry');
    btn.type = 'button';
    btn.addEventListener('click', () => { btn.disabled = true; actions.send({ type: 'retry', turn_id: turnId }); });
    li.querySelector('.meta').append(' ', btn);
  }

  // "queued #n": where each waiting question stands (the running answer is ahead of #1).
  function updateQueuePositions() {
    const waiting = els.transcript.querySelectorAll('li.msg[data-turn-status="queued"]');
    waiting.forEach((li, i) => setStatusLabel(li, `queued #${i + 1}`));
  }

  function showTurn({ turn: t }) {
    const answer = t.message_id ? byId(t.message_id) : null;
    if (answer && t.recovering) setStatusLabel(answer, 'recovering…');
    else if (answer && t.status === 'running') { setStatusLabel(answer, STATUS_LABEL.streaming); showWaiting(answer); }
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
        btn.addEventListener('click', () => actions.send({ type: 'cancel', turn_id: t.id }));
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

  // Our send is durable: its pending copy becomes the message (or goes, if already shown).
  function showAck({ clientId, messageId, seq, behind }) {
    const pending = $(`pending-${clientId}`);
    if (!pending) return; // the `message` event came first and already replaced it
    const real = byId(messageId);
    // Already shown (the event arrived), or stored before our transcript and outside it.
    if ((real && real !== pending) || behind) { pending.remove(); return; }
    pending.id = `m-${messageId}`; // the `message` event will replace it in place
    pending.dataset.id = messageId;
    pending.dataset.seq = seq;
    pending.dataset.status = 'complete';
    pending.classList.remove('pending');
    setStatusLabel(pending, '');
  }

  function showError({ code, detail, failed, call }) {
    if (failed) markFailed(failed, `${code}: ${detail}`);
    if (call && callNotice(call, `${code}: ${detail}`)) return;
    notice(code, detail);
  }

  // ---- ephemeral: presence, typing ---------------------------------------------------------
  function showPresence({ users }) {
    els.presence.replaceChildren(...users.map((u) =>
      el('li', u.id === me.id ? 'me' : '', u.id === me.id ? `${u.name} (you)` : u.name)));
    els.hereNow.hidden = users.length === 0;
    const here = new Set(users.map((u) => String(u.id)));
    for (const li of els.members?.querySelectorAll('li[data-user-id]') || []) {
      li.classList.toggle('online', here.has(li.dataset.userId));
    }
  }

  function showTyping({ user }) {
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

  const SHOW = {
    message: showMessage, message_update: updateMessage, turn: showTurn, text: showText,
    ack: showAck, error: showError, presence: showPresence, typing: showTyping,
    tool_call: showCall, note: showNote, room_update: showRoomState, member_update: showMember,
  };
  // Show the changes of one frame.
  function apply(changes) {
    const stick = nearBottom(); // decide before the DOM grows
    for (const change of changes) {
      try {
        SHOW[change.type]?.(change);
      } catch (err) {
        console.error('room view: could not show', change, err);
      }
    }
    if (stick) scrollToBottom();
  }

  // ---- "Load earlier": older rows (server-rendered, same markup) put on top ------------------
  // `onRows(rows)` lets room.js tell the state about them.
  function setupLoadEarlier(onRows) {
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
        const calls = [];
        for (const li of rows) calls.push(...readCalls(li));
        els.transcript.prepend(...rows);
        for (const li of rows) addRetry(li);
        onRows(rows.map((li) => ({ id: Number(li.dataset.id), seq: Number(li.dataset.seq),
          role: /role-([a-z_]+)/.exec(li.className)?.[1], status: li.dataset.status })), calls);
        if (!more || !rows.length) link.parentElement.remove();
        else link.href = link.href.replace(/before=\d+/, `before=${rows[0].dataset.seq}`);
      } catch (err) {
        notice('load_failed', `Could not load earlier messages (${err.message}).`);
      } finally {
        link.removeAttribute('aria-busy');
      }
    });
  }

  // ---- my sends not stored yet -----------------------------------------------------------------
  const hasStored = (cid) => Boolean(els.transcript.querySelector(`[data-client-id="${cid}"]`));

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
    const li = $(`pending-${cid}`);
    if (!li) return;
    li.classList.remove('pending');
    li.classList.add('failed');
    li.dataset.status = 'failed';
    setStatusLabel(li, 'not sent', why);
  }

  // ---- the composer -----------------------------------------------------------------------------
  let stopped = false;
  function setStopped() { // permanently refused: no more sending
    stopped = true;
    els.input.disabled = true;
    els.send.disabled = true;
  }
  function showStop(anyRunning) {
    els.stop.hidden = !anyRunning || stopped;
  }
  function takeInput() { // the composer's text, cleared; null if there is nothing to send
    const content = els.input.value.replace(/\s+$/, ''); // keep leading indentation
    if (stopped || !content.trim()) return null;
    return content;
  }

  els.composer.addEventListener('submit', (event) => {
    event.preventDefault(); // with JavaScript on, the socket replaces the form POST
    actions.submit();
  });
  els.input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing &&
        !event.altKey && !event.metaKey && !event.ctrlKey) {
      event.preventDefault();
      actions.submit();
    }
  });
  els.input.addEventListener('input', () => { if (els.input.value) actions.typing(); });
  els.stop.addEventListener('click', () => actions.stop());
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !els.stop.hidden) els.stop.click();
  });

  // ---- go ------------------------------------------------------------------------------------------
  const initial = readTranscript(); // first: its streaming answers render from their text
  const initialCalls = readCalls(els.transcript);
  for (const time of els.notes?.querySelectorAll('time[datetime]') || []) localiseTime(time);
  for (const time of els.transcript.querySelectorAll('time[datetime]')) localiseTime(time);
  highlightWithin(els.transcript);
  for (const li of els.transcript.querySelectorAll('li.msg[data-status="interrupted"], li.msg[data-status="failed"]')) addRetry(li);
  updateQueuePositions();

  return {
    initial, initialCalls, apply, setConnection, notice, setupLoadEarlier, hasStored, renderPending,
    markFailed, setStopped, showStop, takeInput, scrollToBottom,
    clearInput() { els.input.value = ''; },
    streamText: (id) => streams.get(id)?.text,
  };
}
