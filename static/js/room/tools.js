// room/tools.js: the client tools this page offers the model with every `send` (docs/protocol.md,
// `send.tools`), and how each one answers. No DOM, no socket: room.js sends the answers and
// room/view.js shows the buttons of `choose`.
//
// A call reaches us as a ToolCallData in state `waiting_client`; only the person whose message
// started the turn may answer it (the server refuses anyone else), so the page answers only its
// own user's calls.

export const CHOOSE_MAX_OPTIONS = 8;

export const CLIENT_TOOLS = [
  {
    name: 'local_time',
    description: "The asking user's local date, time and IANA time zone, from their browser.",
    parameters: { type: 'object', properties: {}, additionalProperties: false },
  },
  {
    name: 'choose',
    description: 'Ask the user who asked to pick one of 2 to 8 options; returns their choice. ' +
      'Use it when the answer depends on a preference only they can give.',
    parameters: {
      type: 'object',
      properties: {
        question: { type: 'string', maxLength: 300, description: 'The question shown above the options.' },
        options: {
          type: 'array', minItems: 2, maxItems: CHOOSE_MAX_OPTIONS,
          items: { type: 'string', minLength: 1, maxLength: 100 },
        },
      },
      required: ['question', 'options'],
      additionalProperties: false,
    },
  },
];

const NAMES = new Set(CLIENT_TOOLS.map((t) => t.name));

// Whether the page should answer this call: one of ours (by kind and state), for this user.
export function isMine(call, meId) {
  return call.kind === 'client' && call.state === 'waiting_client' && call.initiator_id === meId;
}

// The `choose` input if it is well formed ({question, options}), else null.
export function chooseInput(input) {
  if (!input || typeof input !== 'object') return null;
  const { question, options } = input;
  if (typeof question !== 'string' || !Array.isArray(options)) return null;
  if (options.length < 2 || options.length > CHOOSE_MAX_OPTIONS) return null;
  if (!options.every((o) => typeof o === 'string' && o.trim() && o.length <= 100)) return null;
  if (new Set(options).size !== options.length) return null;
  return { question: question.slice(0, 300), options };
}

function localTime() {
  const now = new Date();
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  const offset = -now.getTimezoneOffset(); // minutes east of UTC
  const sign = offset >= 0 ? '+' : '-';
  const pad = (n) => String(Math.floor(Math.abs(n))).padStart(2, '0');
  const local = new Date(now.getTime() + offset * 60_000).toISOString().slice(0, 19);
  return {
    local: `${local}${sign}${pad(offset / 60)}:${pad(offset % 60)}`,
    time_zone: zone,
    text: now.toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'long' }),
  };
}

// What to answer at once: {output} or {error}; null for `choose` with good input (the person
// answers it with a click: chosen() below).
export function answerNow(call) {
  if (!NAMES.has(call.name)) return { error: `this browser has no tool named ${call.name}` };
  if (call.name === 'local_time') return { output: localTime() };
  if (!chooseInput(call.input)) {
    return { error: 'choose needs a question and 2 to 8 different, non-empty options (strings)' };
  }
  return null;
}

// The answer of `choose` once the person picked `option`.
export function chosen(option) {
  return { output: { choice: option } };
}
