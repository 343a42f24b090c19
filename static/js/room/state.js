// room/state.js: what the browser knows of a room, built only from frames; the twin of
// RoomState in rooms/client.py. Frames in, state and changes out: no DOM, no socket, no timers.
// It applies the "Client rules" of docs/protocol.md:
//   1. keep lastSeq; apply a room event only when seq === lastSeq + 1, ignore older ones,
//      and `sync` on a gap;
//   2. keep nextIndex per streaming message; append a delta only when index === nextIndex;
//   3. `sync` when a pong says the room is ahead;
//   4. keep unacked sends (the outbox) to re-send with the same client_id after `ready`;
//   5. keep tool calls by id (tool_call, tool_update) and the room's notes, like other events.
//
// apply(frame) returns {sync, changes, outboxChanged}: whether the client must `sync`, what the
// view has to show (a list of {type, ...}; see each handler), and whether the outbox changed
// (the caller keeps it across reloads).

export class RoomState {
  constructor({ lastSeq = 0, me = null } = {}) {
    this.lastSeq = lastSeq;
    this.me = me; // my user id: my stored messages settle my sends
    this.messages = new Map(); // id -> {id, seq, role, status, content, turnId}; content may be null
    this.nextIndex = new Map(); // message id -> next expected delta index, while it streams
    this.turns = new Map(); // turn id -> the last `turn` object seen
    this.running = new Set(); // ids of running turns (and parked ones: waiting on a person, still stoppable)
    this.outbox = new Map(); // client_id -> content: sends not acked yet
    this.calls = new Map(); // call id -> the last ToolCallData seen (tool_call, tool_update)
    this.notes = new Map(); // note id -> note
    this.duplicateDeltas = 0;
  }

  // A message the page already shows (server-rendered). Its content is known only while it
  // streams (the page carries its text); a finished one is HTML only, so content is null.
  seed({ id, seq, role, status, content = null, nextIndex = 0, turnId = null }) {
    this.messages.set(id, { id, seq, role, status, content, turnId });
    if (status === 'streaming') {
      this.nextIndex.set(id, nextIndex);
      if (turnId) this.running.add(turnId);
    }
  }

  // A tool call the page already shows (server-rendered with its message).
  seedCall(call) {
    this.calls.set(call.id, call);
  }

  // The calls of one message, in the order they were made.
  callsOf(messageId) {
    return [...this.calls.values()].filter((c) => c.message_id === messageId);
  }

  // A send of ours, kept until the server acks it (or stores it: the `message` event).
  queueSend(clientId, content) {
    this.outbox.set(clientId, content);
  }

  apply(frame) {
    const out = { sync: false, changes: [], outboxChanged: false };
    switch (frame.type) {
      case 'message': case 'message_update': case 'turn':
      case 'tool_call': case 'tool_update': case 'note': case 'room_update': case 'member_update':
        this.roomEvent(frame, out); break;
      case 'delta': this.delta(frame, out); break;
      case 'snapshot': this.snapshot(frame, out); break;
      case 'ready': this.ready(frame, out); break;
      case 'ack': this.ack(frame, out); break;
      case 'error': this.error(frame, out); break;
      case 'pong': out.sync = frame.latest_seq > this.lastSeq; break;
      case 'presence': this.presence(frame, out); break;
      case 'typing':
        if (frame.user && frame.user.id !== this.me) out.changes.push({ type: 'typing', user: frame.user });
        break;
      default: break; // unknown frame types are ignored (forward compatible)
    }
    return out;
  }

  roomEvent(f, out) {
    if (!Number.isInteger(f.seq) || f.seq <= this.lastSeq) return; // already have it
    if (f.seq > this.lastSeq + 1) { out.sync = true; return; } // a gap: fetch what we missed
    this.lastSeq = f.seq;
    if (f.type === 'message') this.message(f.message, out);
    else if (f.type === 'message_update') this.messageUpdate(f.message, out);
    else if (f.type === 'turn') this.turn(f.turn, out);
    else if (f.type === 'note') this.note(f.note, out);
    else if (f.type === 'room_update') out.changes.push({ type: 'room_update', room: f.room });
    else if (f.type === 'member_update') out.changes.push({ type: 'member_update', member: f.member });
    else this.call(f.call, out, f.type === 'tool_call');
  }

  // {type: 'message', message, mine}: show a new message (or replace its copy, or my pending one).
  message(m, out) {
    const mine = Boolean(m.client_id && m.author && m.author.id === this.me);
    if (mine && this.outbox.delete(m.client_id)) out.outboxChanged = true; // stored: no re-send
    if (m.status === 'hidden' || m.status === 'deleted') { // moderated: no text is kept
      this.forget(m.id);
      out.changes.push({ type: 'message', message: m, mine });
      return;
    }
    const known = this.messages.get(m.id);
    // Keep text we may already hold (a snapshot before the event on a slow path).
    const held = known && known.status === 'streaming' ? known.content : '';
    const content = m.status === 'streaming' ? held || m.content || '' : m.content;
    this.messages.set(m.id, { id: m.id, seq: m.seq, role: m.role, status: m.status, content, turnId: m.turn_id });
    if (m.status !== 'streaming') this.nextIndex.delete(m.id);
    else if (!this.nextIndex.has(m.id)) this.nextIndex.set(m.id, 0);
    out.changes.push({ type: 'message', message: { ...m, content }, mine, nextIndex: this.nextIndex.get(m.id) });
  }

  // {type: 'message_update', message}: its status or content changed (final, hidden, retried).
  messageUpdate(m, out) {
    if (m.status === 'hidden' || m.status === 'deleted') { // moderated: no text is kept
      this.forget(m.id);
    } else {
      const known = this.messages.get(m.id);
      this.messages.set(m.id, { ...known, id: m.id, seq: known?.seq ?? m.seq, role: m.role ?? known?.role,
        status: m.status, content: m.content, turnId: m.turn_id ?? known?.turnId });
      // Retried (streaming again): the text so far, then deltas; the index is unknown until a
      // snapshot (the next delta makes us sync).
      this.nextIndex.delete(m.id);
    }
    out.changes.push({ type: 'message_update', message: m });
  }

  // {type: 'turn', turn}
  turn(t, out) {
    this.turns.set(t.id, t);
    if (t.status === 'running' || t.status === 'parked') this.running.add(t.id); else this.running.delete(t.id);
    out.changes.push({ type: 'turn', turn: t });
  }

  // {type: 'tool_call', call, created}: a call was made or its state changed.
  call(c, out, created) {
    this.calls.set(c.id, c);
    out.changes.push({ type: 'tool_call', call: c, created });
  }

  // {type: 'note', note}: a note for the room's notes panel.
  note(n, out) {
    this.notes.set(n.id, n);
    out.changes.push({ type: 'note', note: n });
  }

  // {type: 'text', id, text, nextIndex}: a streaming message's whole text so far.
  delta(f, out) {
    const msg = this.messages.get(f.message_id);
    if (!msg) { out.sync = true; return; } // we missed its `message` event
    if (msg.status !== 'streaming') return; // already final
    const want = this.nextIndex.get(f.message_id) ?? 0;
    if (f.index < want) { this.duplicateDeltas += 1; return; }
    if (f.index > want) { out.sync = true; return; } // a lost delta: the snapshot will fix it
    msg.content = (msg.content || '') + f.text;
    this.nextIndex.set(f.message_id, want + 1);
    out.changes.push({ type: 'text', id: f.message_id, text: msg.content, nextIndex: want + 1 });
  }

  snapshot(f, out) {
    let msg = this.messages.get(f.message_id);
    if (!msg) {
      // The snapshot overtook its `message` event: show the answer now, the event fills in the
      // rest. (The Python client holds the snapshot back instead; a page has to show the text.)
      const m = { id: f.message_id, role: 'assistant', author: null, content: '', html: '',
        status: 'streaming', created_at: null };
      msg = { id: m.id, seq: undefined, role: m.role, status: m.status, content: '', turnId: null };
      this.messages.set(m.id, msg);
      out.changes.push({ type: 'message', message: m, mine: false, placeholder: true });
    }
    if (msg.status !== 'streaming') return;
    if (f.next_index < (this.nextIndex.get(f.message_id) ?? 0)) return; // older than what we have
    msg.content = f.content;
    this.nextIndex.set(f.message_id, f.next_index);
    out.changes.push({ type: 'text', id: f.message_id, text: f.content, nextIndex: f.next_index });
  }

  // {type: 'ready', resend}: caught up; the sends to make again (same client_id).
  ready(f, out) {
    this.lastSeq = Math.max(this.lastSeq, f.seq);
    const resend = [...this.outbox].map(([client_id, content]) => ({ type: 'send', client_id, content }));
    out.changes.push({ type: 'ready', resend });
  }

  // {type: 'ack', clientId, messageId, seq, behind}: behind = stored before what we show.
  ack(f, out) {
    if (this.outbox.delete(f.client_id)) out.outboxChanged = true;
    out.changes.push({ type: 'ack', clientId: f.client_id, messageId: f.message_id, seq: f.seq,
      behind: f.seq <= this.lastSeq });
  }

  // {type: 'error', code, detail, failed, call, ref, retryAfter}: failed = the client_id of a
  // send it refused; call = the id of the tool call a tool_result or tool_approval was about;
  // ref 'sync' = a `sync` refused (its own rate), to be asked again after retryAfter seconds.
  error(f, out) {
    const ref = f.ref != null ? String(f.ref) : null;
    const failed = ref !== null && this.outbox.delete(ref) ? ref : null;
    if (failed) out.outboxChanged = true;
    const call = ref !== null && !failed && this.calls.has(ref) ? ref : null;
    out.changes.push({ type: 'error', code: f.code, detail: f.detail, failed, call, ref,
      retryAfter: typeof f.retry_after === 'number' ? f.retry_after : null });
  }

  // {type: 'presence', users}: one entry per person.
  presence(f, out) {
    const users = [...new Map((f.users || []).map((u) => [u.id, u])).values()];
    out.changes.push({ type: 'presence', users });
  }

  forget(id) {
    this.messages.delete(id);
    this.nextIndex.delete(id);
  }

  // The text of a message still streaming (undefined otherwise).
  streamText(id) {
    const msg = this.messages.get(id);
    return msg && msg.status === 'streaming' ? msg.content : undefined;
  }
}
