// markdown.js: renders an assistant answer as it streams, the way the server will render it.
//
// The server renders markdown with markdown-it ("js-default": raw HTML is text, + tables and
// strikethrough) and cleans it with nh3 (rooms/rendering.py). This module is a small port of
// the same markdown-it rules, so the streamed DOM equals the final server HTML, and swapping in
// that HTML when the answer completes changes nothing on screen. tests/browser/test_markdown.py
// checks both renderers against each other on a corpus.
//
// Safety by construction: it never parses HTML. Elements come from a fixed list and text goes
// in as text nodes; the only attributes are a link's href (kept only if the browser resolves it
// to http, https or mailto, like nh3's url_schemes), title, rel, a code block's language class,
// an ordered list's start and a table cell's text-align.
//
// Streaming: StreamView re-parses the blocks of the whole text (cheap: one pass over the
// lines), keeps the DOM of every top-level block whose source is unchanged, and renders only
// the blocks that changed - in practice the last, still open one.
//
// Not supported (the server's HTML replaces the streamed DOM when the answer completes):
// reference-style links ([text][label] with a "[label]: url" definition) and punycode hosts.

import { highlightCode } from './highlight.js';

// ---- lines and indentation --------------------------------------------------------------------
const isBlank = (line) => /^[ \t]*$/.test(line);

// Columns of leading whitespace; `from`: the column the text starts at (tabs stop every 4).
function indentOf(line, from = 0) {
  let col = from;
  for (const c of line) {
    if (c === ' ') col += 1;
    else if (c === '\t') col += 4 - (col % 4);
    else break;
  }
  return col - from;
}

// Remove `n` columns of leading indentation (a tab that straddles the cut leaves spaces).
function dedent(line, n) {
  let col = 0;
  let i = 0;
  while (i < line.length && col < n) {
    const c = line[i];
    if (c === ' ') { col += 1; i += 1; continue; }
    if (c !== '\t') break;
    const width = 4 - (col % 4);
    if (col + width > n) return ' '.repeat(col + width - n) + line.slice(i + 1);
    col += width;
    i += 1;
  }
  return line.slice(i);
}

// Remove `n` columns of a container's indentation; the rest of the leading whitespace becomes
// spaces, so tabs keep the columns they had in the whole line.
function unindent(line, n) {
  const [lead] = /^[ \t]*/.exec(line);
  return ' '.repeat(Math.max(0, indentOf(lead) - n)) + line.slice(lead.length);
}

// ---- block starts ---------------------------------------------------------------------------------
const RE_HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const RE_SETEXT = /^ {0,3}(=+|-+)[ \t]*$/;
const RE_MARKER = /^([-+*]|(\d{1,9})([.)]))(?=[ \t]|$)/;

function fenceOpen(line) {
  if (indentOf(line) >= 4) return null;
  const m = /^([ \t]*)(`{3,}|~{3,})(.*)$/.exec(line);
  if (!m || (m[2][0] === '`' && m[3].includes('`'))) return null;
  return { indent: indentOf(m[1]), char: m[2][0], len: m[2].length, info: m[3] };
}

function atxHeading(line) {
  if (indentOf(line) >= 4) return null;
  const m = /^[ \t]*(#{1,6})(?=[ \t]|$)(.*)$/.exec(line);
  if (!m) return null;
  let rest = m[2].replace(/[ \t]+$/, '');
  const closing = /[ \t]#+$/.exec(rest);
  if (closing) rest = rest.slice(0, closing.index + 1);
  return { level: m[1].length, text: rest.trim() };
}

const isQuote = (line) => indentOf(line) < 4 && /^[ \t]*>/.test(line);
const isHr = (line) => indentOf(line) < 4 && RE_HR.test(line.trimStart());

function listMarker(line) {
  const indent = indentOf(line);
  if (indent >= 4) return null;
  const body = line.trimStart();
  const m = RE_MARKER.exec(body);
  if (!m) return null;
  const markerEnd = line.length - body.length + m[1].length; // index just past the marker
  const markerCol = indentOf(line.slice(0, line.length - body.length)) + m[1].length;
  const after = line.slice(markerEnd);
  const empty = isBlank(after);
  let gap = indentOf(after, markerCol); // columns of whitespace after the marker
  if (empty || gap > 4) gap = 1; // empty item, or the content is an indented code block
  return {
    ordered: Boolean(m[2]),
    kind: m[2] ? m[3] : m[1], // "." / ")" or the bullet character: a change starts a new list
    first: m[2] ? parseInt(m[2], 10) : null,
    contentCol: markerCol + gap,
    // The line with its marker blanked out, so every line of the item dedents the same way.
    spaced: ' '.repeat(markerCol) + after,
    empty,
  };
}

// The delimiter row of a table: its column alignments, or null.
function tableAligns(line) {
  if (indentOf(line) >= 4) return null;
  const text = line.trim();
  if (!text || !'|-:'.includes(text[0])) return null;
  if (text[0] === '-' && /^-[ \t]/.test(text)) return null; // a list item, not a delimiter row
  const cells = text.split('|');
  const aligns = [];
  for (let i = 0; i < cells.length; i += 1) {
    const cell = cells[i].trim();
    if (!cell) {
      if (i === 0 || i === cells.length - 1) continue;
      return null;
    }
    if (!/^:?-+:?$/.test(cell)) return null;
    const left = cell[0] === ':';
    const right = cell[cell.length - 1] === ':';
    aligns.push(left && right ? 'center' : right ? 'right' : left ? 'left' : '');
  }
  return aligns.length ? aligns : null;
}

// Split a table row on unescaped pipes ("\|" is a literal pipe), dropping the outer ones.
function tableCells(line) {
  const cells = [];
  let current = '';
  let escaped = false;
  for (const c of line.trim()) {
    if (c === '|' && !escaped) { cells.push(current); current = ''; }
    else if (c === '|') current = `${current.slice(0, -1)}|`;
    else current += c;
    escaped = c === '\\';
  }
  cells.push(current);
  if (cells.length && cells[0].trim() === '') cells.shift();
  if (cells.length && cells[cells.length - 1].trim() === '') cells.pop();
  return cells;
}

function tableStart(lines, i) {
  if (i + 1 >= lines.length || indentOf(lines[i]) >= 4 || !lines[i].includes('|')) return null;
  const aligns = tableAligns(lines[i + 1]);
  if (!aligns) return null;
  const head = tableCells(lines[i]);
  return head.length === aligns.length ? { aligns, head } : null;
}

// Can this line start a block that ends a paragraph? `inParagraph`: only a list that starts
// with 1 and is not empty can; outside one (table rows, lazy lines) any list marker does.
function interrupts(lines, i, { inParagraph = true } = {}) {
  const line = lines[i];
  if (fenceOpen(line) || isQuote(line) || isHr(line) || atxHeading(line)) return true;
  const marker = listMarker(line);
  if (marker && (!inParagraph || (!marker.empty && (!marker.ordered || marker.first === 1)))) return true;
  return inParagraph && Boolean(tableStart(lines, i));
}

// ---- blocks -------------------------------------------------------------------------------------
// parseBlocks(lines, openEnd) -> [{type, start, end, ...}]; start/end are line indexes.
// `openEnd`: the last line is the last of the text and has no newline (matters inside code).

export function parseBlocks(lines, openEnd = false) {
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    if (isBlank(lines[i])) { i += 1; continue; }
    const start = i;
    const block = parseBlock(lines, i, openEnd);
    block.start = start;
    i = block.end;
    blocks.push(block);
  }
  return blocks;
}

function codeLines(lines, from, to, openEnd) {
  return lines.slice(from, to).map((l, k) => (openEnd && from + k === lines.length - 1 ? l : `${l}\n`)).join('');
}

function parseBlock(lines, i, openEnd) {
  const line = lines[i];
  const table = tableStart(lines, i);
  if (table) return parseTable(lines, i, table);
  if (indentOf(line) >= 4) { // indented code: trailing blank lines are not part of it
    let end = i + 1;
    for (let j = i + 1; j < lines.length; j += 1) {
      if (isBlank(lines[j])) continue;
      if (indentOf(lines[j]) < 4) break;
      end = j + 1;
    }
    const text = lines.slice(i, end).map((l) => `${dedent(l, 4)}\n`).join('');
    return { type: 'code', lang: '', text, end };
  }
  const fence = fenceOpen(line);
  if (fence) {
    let j = i + 1;
    let closed = false;
    for (; j < lines.length; j += 1) {
      const m = /^[ \t]*(`{3,}|~{3,})[ \t]*$/.exec(lines[j]);
      if (m && indentOf(lines[j]) < 4 && m[1][0] === fence.char && m[1].length >= fence.len) { closed = true; break; }
    }
    const body = lines.slice(i + 1, j).map((l) => dedent(l, fence.indent));
    const text = codeLines(body, 0, body.length, openEnd && !closed);
    return { type: 'code', lang: unescapeAll(fence.info).trim().split(/\s+/)[0], text, end: closed ? j + 1 : j };
  }
  if (isHr(line)) return { type: 'hr', end: i + 1 };
  const heading = atxHeading(line);
  if (heading) return { type: 'heading', level: heading.level, text: heading.text, end: i + 1 };
  if (isQuote(line)) return parseQuote(lines, i, openEnd);
  const marker = listMarker(line);
  if (marker) return parseList(lines, i, marker, openEnd);
  return parseParagraph(lines, i);
}

function parseParagraph(lines, i) {
  let j = i + 1;
  let level = 0;
  for (; j < lines.length; j += 1) {
    const line = lines[j];
    if (isBlank(line)) break;
    if (indentOf(line) >= 4) continue;
    const setext = RE_SETEXT.exec(line);
    if (setext) { level = setext[1][0] === '=' ? 1 : 2; break; }
    if (interrupts(lines, j)) break;
  }
  const text = lines.slice(i, j).join('\n').trim();
  if (level) return { type: 'heading', level, text, end: j + 1 };
  return { type: 'paragraph', text, open: true, end: j };
}

function parseTable(lines, i, { aligns, head }) {
  const rows = [];
  let j = i + 2;
  for (; j < lines.length; j += 1) {
    const line = lines[j];
    if (isBlank(line) || indentOf(line) >= 4 || interrupts(lines, j, { inParagraph: false })) break;
    rows.push(tableCells(line));
  }
  return { type: 'table', aligns, head, rows, end: j };
}

// Do these blocks end with a paragraph still open (no blank line after it, at any depth)?
function endsOpen(blocks, size) {
  const last = blocks[blocks.length - 1];
  return Boolean(last) && last.end === size && Boolean(last.open);
}

// A line that continues the paragraph at the end of a container ("lazy continuation").
function lazyContinues(lines, j, inner) {
  if (isBlank(lines[j]) || interrupts(lines, j, { inParagraph: false })) return false;
  return endsOpen(parseBlocks(inner), inner.length);
}

function parseQuote(lines, i, openEnd) {
  const inner = [];
  let j = i;
  for (; j < lines.length; j += 1) {
    const line = lines[j];
    if (isQuote(line)) {
      // Blank out up to the ">" and drop one column of space after it, keeping tab stops.
      const [prefix] = /^[ \t]*>/.exec(line);
      const col = indentOf(prefix.slice(0, -1)) + 1;
      const rest = line.slice(prefix.length);
      inner.push(unindent(' '.repeat(col) + rest, isSpace(rest[0]) ? col + 1 : col));
    } else if (lazyContinues(lines, j, inner)) {
      inner.push(line);
    } else break;
  }
  const children = parseBlocks(inner, openEnd && j === lines.length);
  return { type: 'blockquote', children, open: endsOpen(children, inner.length), end: j };
}

function parseList(lines, i, first, openEnd) {
  const items = [];
  let tight = true;
  let open = false;
  let j = i;
  let marker = first;
  while (marker) {
    // One item: its first line, then lines indented to its content, blank lines, lazy lines.
    const col = marker.contentCol;
    const inner = [unindent(marker.spaced, col)];
    let k = j + 1;
    let end = k; // just past the item's last non-blank line
    for (; k < lines.length; k += 1) {
      const line = lines[k];
      if (isBlank(line)) {
        if (marker.empty && end === j + 1) break; // an item starts with at most one blank line
        inner.push(unindent(line, col));
        continue;
      }
      if (indentOf(line) >= col) { inner.push(unindent(line, col)); end = k + 1; continue; }
      if (end === k && lazyContinues(lines, k, inner.slice(0, end - j))) { inner.push(unindent(line, col)); end = k + 1; continue; }
      break;
    }
    // Blank lines before the next item belong to this one (an open code block keeps them).
    const content = inner;
    const children = parseBlocks(content, openEnd && j + content.length === lines.length);
    for (let c = 1; c < children.length; c += 1) {
      if (children[c].start > children[c - 1].end) tight = false; // a blank line between blocks
    }
    items.push(children);
    open = endsOpen(children, end - j);
    // Blank lines, then an item of the same kind: the list goes on (and is loose).
    let next = end;
    while (next < lines.length && isBlank(lines[next])) next += 1;
    const following = next < lines.length ? listMarker(lines[next]) : null;
    if (!following || following.kind !== marker.kind || isHr(lines[next])) { j = end; break; }
    if (next > end) tight = false;
    j = next;
    marker = following;
  }
  return { type: 'list', ordered: first.ordered, first: first.first, tight, items, open, end: j };
}

// ---- inline -------------------------------------------------------------------------------------
const ESCAPABLE = '\\!"#$%&\'()*+,./:;<=>?@[]^_`{|}~-';
const RE_PUNCT = /[\p{P}\p{S}]/u;
const isSpace = (c) => c === ' ' || c === '\t';
const isWhite = (c) => /^[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]$/.test(c);

let entityDecoder = null;
function decodeNamedEntity(entity) {
  if (typeof document === 'undefined') return null;
  // An inert document (nothing in it loads or runs); `entity` is "&name;" and nothing else.
  entityDecoder ||= document.implementation.createHTMLDocument('').createElement('textarea');
  entityDecoder.innerHTML = entity;
  const text = entityDecoder.value;
  return text === entity ? null : text;
}

function validCodePoint(c) {
  return !((c >= 0xd800 && c <= 0xdfff) || (c >= 0xfdd0 && c <= 0xfdef) || (c & 0xffff) === 0xffff ||
    (c & 0xffff) === 0xfffe || c <= 0x08 || c === 0x0b || (c >= 0x0e && c <= 0x1f) ||
    (c >= 0x7f && c <= 0x9f) || c > 0x10ffff);
}

// An entity at src[pos]: [text, length] or null.
function entityAt(src, pos) {
  const numeric = /^&#(x[0-9a-f]{1,6}|[0-9]{1,7});/i.exec(src.slice(pos, pos + 12));
  if (numeric) {
    const v = numeric[1];
    const code = v[0].toLowerCase() === 'x' ? parseInt(v.slice(1), 16) : parseInt(v, 10);
    return [String.fromCodePoint(validCodePoint(code) ? code : 0xfffd), numeric[0].length];
  }
  const named = /^&([a-z][a-z0-9]{1,31});/i.exec(src.slice(pos, pos + 34));
  if (!named) return null;
  const text = decodeNamedEntity(named[0]);
  return text == null ? null : [text, named[0].length];
}

// Backslash escapes and entities, as in link destinations, titles and fence info strings.
function unescapeAll(str) {
  let out = '';
  for (let i = 0; i < str.length; i += 1) {
    const c = str[i];
    if (c === '\\' && i + 1 < str.length && ESCAPABLE.includes(str[i + 1])) { out += str[i + 1]; i += 1; continue; }
    if (c === '&') {
      const entity = entityAt(str, i);
      if (entity) { out += entity[0]; i += entity[1] - 1; continue; }
    }
    out += c;
  }
  return out;
}

// mdurl.encode: percent-encode what is not allowed in a URL, keeping existing %XX escapes.
function encodeUrl(url) {
  let out = '';
  for (let i = 0; i < url.length; i += 1) {
    const c = url[i];
    const code = url.charCodeAt(i);
    if (c === '%' && /^[0-9a-f]{2}$/i.test(url.slice(i + 1, i + 3))) { out += url.slice(i, i + 3); i += 2; continue; }
    if (code < 128) {
      out += /[0-9a-z;/?:@&=+$,\-_.!~*'()#]/i.test(c) ? c : `%${code.toString(16).toUpperCase().padStart(2, '0')}`;
      continue;
    }
    if (code >= 0xd800 && code <= 0xdfff) {
      const next = url.charCodeAt(i + 1);
      if (code <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) { out += encodeURIComponent(url[i] + url[i + 1]); i += 1; }
      else out += '%EF%BF%BD';
      continue;
    }
    out += encodeURIComponent(c);
  }
  return out;
}

// The text shown for an autolink: percent escapes decoded, except reserved characters.
function decodeUrlText(url) {
  return url.replace(/(%[0-9a-f]{2})+/gi, (seq) => {
    try {
      return decodeURIComponent(seq).replace(/[;/?:@&=+$,#]/g, encodeURIComponent);
    } catch {
      return seq;
    }
  });
}

const validLink = (href) => {
  const s = href.trim().toLowerCase();
  return /^(vbscript|javascript|file|data):/.test(s) ? /^data:image\/(gif|png|jpeg|webp);/.test(s) : true;
};

function linkDestination(src, pos, max) {
  if (src[pos] === '<') {
    for (let p = pos + 1; p < max; p += 1) {
      const c = src[p];
      if (c === '\n' || c === '<') return null;
      if (c === '>') return { str: unescapeAll(src.slice(pos + 1, p)), pos: p + 1 };
      if (c === '\\' && p + 1 < max) p += 1;
    }
    return null;
  }
  let level = 0;
  let p = pos;
  for (; p < max; p += 1) {
    const code = src.charCodeAt(p);
    if (code === 0x20 || code < 0x20 || code === 0x7f) break;
    if (code === 0x5c && p + 1 < max) {
      if (src[p + 1] === ' ') break;
      p += 1;
      continue;
    }
    if (code === 0x28) { level += 1; if (level > 32) return null; }
    if (code === 0x29) { if (level === 0) break; level -= 1; }
  }
  if (p === pos || level !== 0) return null;
  return { str: unescapeAll(src.slice(pos, p)), pos: p };
}

function linkTitle(src, pos, max) {
  if (pos >= max) return null;
  let close = src[pos];
  if (close !== '"' && close !== "'" && close !== '(') return null;
  if (close === '(') close = ')';
  for (let p = pos + 1; p < max; p += 1) {
    const c = src[p];
    if (c === close) return { str: unescapeAll(src.slice(pos + 1, p)), pos: p + 1 };
    if (c === '(' && close === ')') return null;
    if (c === '\\' && p + 1 < max) p += 1;
  }
  return null;
}

const skipSpaceAndNewlines = (src, pos, max) => {
  while (pos < max && (isSpace(src[pos]) || src[pos] === '\n')) pos += 1;
  return pos;
};

// "[label](dest "title")" starting at the "[" at `pos`: {labelStart, labelEnd, href, title, end}.
function linkAt(src, pos, max) {
  const labelEnd = linkLabelEnd(src, pos, max);
  if (labelEnd < 0 || src[labelEnd + 1] !== '(') return null;
  let p = skipSpaceAndNewlines(src, labelEnd + 2, max);
  if (p >= max) return null;
  let href = '';
  let title = '';
  const dest = linkDestination(src, p, max);
  if (dest) {
    href = encodeUrl(dest.str);
    if (validLink(href)) p = dest.pos; else href = '';
    const before = p;
    p = skipSpaceAndNewlines(src, p, max);
    const t = linkTitle(src, p, max);
    if (p < max && before !== p && t) { title = t.str; p = skipSpaceAndNewlines(src, t.pos, max); }
  }
  if (p >= max || src[p] !== ')') return null;
  return { labelStart: pos + 1, labelEnd, href, title, end: p + 1 };
}

// The index of the "]" closing the label that opens at `pos`, or -1. A label cannot hold a link.
function linkLabelEnd(src, pos, max) {
  let level = 1;
  let p = pos + 1;
  while (p < max) {
    const c = src[p];
    if (c === ']') { level -= 1; if (level === 0) return p; }
    const before = p;
    p = skipToken(src, p, max);
    if (c === '[') {
      if (before === p - 1) level += 1;
      else return -1; // a nested link
    }
  }
  return -1;
}

function codeSpanAt(src, pos, max) {
  let p = pos;
  while (p < max && src[p] === '`') p += 1;
  const len = p - pos;
  let from = p;
  for (;;) {
    const open = src.indexOf('`', from);
    if (open < 0 || open >= max) return { len, end: -1 };
    let close = open;
    while (close < max && src[close] === '`') close += 1;
    if (close - open === len) {
      let text = src.slice(p, open).replace(/\n/g, ' ');
      if (text.length > 2 && text[0] === ' ' && text[text.length - 1] === ' ' && text.trim()) text = text.slice(1, -1);
      return { len, end: close, text };
    }
    from = close;
  }
}

const RE_AUTOLINK = /^([a-zA-Z][a-zA-Z0-9+.-]{1,31}):([^<>\x00-\x20]*)$/;
const RE_EMAIL = /^([a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*)$/;

function autolinkAt(src, pos, max) {
  const close = src.indexOf('>', pos + 1);
  if (close < 0 || close >= max) return null;
  const url = src.slice(pos + 1, close);
  if (url.includes('<')) return null;
  let href = null;
  if (RE_AUTOLINK.test(url)) href = encodeUrl(url);
  else if (RE_EMAIL.test(url)) href = encodeUrl(`mailto:${url}`);
  if (href == null || !validLink(href)) return null;
  return { href, text: decodeUrlText(url), end: close + 1 };
}

// Skip one whole inline token at `pos` (used to find where a link label ends).
function skipToken(src, pos, max) {
  const c = src[pos];
  if (c === '\\' && pos + 1 < max) return pos + 2;
  if (c === '`') {
    const span = codeSpanAt(src, pos, max);
    return span.end > 0 ? span.end : pos + span.len;
  }
  if (c === '<') { const a = autolinkAt(src, pos, max); if (a) return a.end; }
  if (c === '&') { const e = entityAt(src, pos); if (e) return pos + e[1]; }
  if (c === '[' || (c === '!' && src[pos + 1] === '[')) {
    const link = linkAt(src, c === '!' ? pos + 1 : pos, max);
    if (link) return link.end;
  }
  return pos + 1;
}

function scanDelims(src, pos, max, canSplitWord) {
  const marker = src[pos];
  let p = pos;
  while (p < max && src[p] === marker) p += 1;
  const prev = pos > 0 ? String.fromCodePoint(src.codePointAt(pos - 1 - (/[\udc00-\udfff]/.test(src[pos - 1]) && pos > 1 ? 1 : 0))) : ' ';
  const next = p < max ? String.fromCodePoint(src.codePointAt(p)) : ' ';
  const prevPunct = RE_PUNCT.test(prev);
  const nextPunct = RE_PUNCT.test(next);
  const prevWhite = isWhite(prev);
  const nextWhite = isWhite(next);
  const left = !nextWhite && (!nextPunct || prevWhite || prevPunct);
  const right = !prevWhite && (!prevPunct || nextWhite || nextPunct);
  return {
    length: p - pos,
    open: left && (canSplitWord || !right || prevPunct),
    close: right && (canSplitWord || !left || nextPunct),
  };
}

// parseInline(src) -> inline nodes: {type: 'text'|'code', text} | {type: 'br'} |
// {type: 'em'|'strong'|'s', children} | {type: 'a', href, title, children}.
export function parseInline(src) {
  return tokensToTree(tokenize(src, 0, src.length));
}

// markdown-it's inline pass: a flat token list plus a delimiter list, then pairing.
function tokenize(src, pos, max) {
  const tokens = [];
  const delimiters = [];
  let pending = '';
  const flush = () => { if (pending) { tokens.push({ type: 'text', text: pending }); pending = ''; } };
  const push = (token) => { flush(); tokens.push(token); return token; };

  while (pos < max) {
    const c = src[pos];
    if (c === '\n') {
      if (pending.endsWith('  ')) { pending = pending.replace(/ +$/, ''); push({ type: 'br' }); }
      else { pending = pending.replace(/ $/, ''); push({ type: 'text', text: '\n' }); }
      pos += 1;
      while (pos < max && isSpace(src[pos])) pos += 1;
      continue;
    }
    if (c === '\\' && pos + 1 < max) {
      const n = src[pos + 1];
      if (n === '\n') {
        push({ type: 'br' });
        pos += 2;
        while (pos < max && isSpace(src[pos])) pos += 1;
        continue;
      }
      const cp = String.fromCodePoint(src.codePointAt(pos + 1));
      // Its own token, as in markdown-it: not trailing space for a hard break, not a lone "~".
      push({ type: 'text', text: ESCAPABLE.includes(n) ? n : `\\${cp}`, escaped: true });
      pos += 1 + cp.length;
      continue;
    }
    if (c === '`') {
      const span = codeSpanAt(src, pos, max);
      if (span.end < 0) { pending += '`'.repeat(span.len); pos += span.len; continue; }
      push({ type: 'code', text: span.text });
      pos = span.end;
      continue;
    }
    if (c === '~') {
      const d = scanDelims(src, pos, max, true);
      if (d.length < 2) { pending += c; pos += 1; continue; }
      let len = d.length;
      if (len % 2) { push({ type: 'text', text: '~' }); len -= 1; }
      for (let k = 0; k < len; k += 2) {
        push({ type: 'text', text: '~~' });
        delimiters.push({ marker: '~', length: 0, token: tokens.length - 1, end: -1, open: d.open, close: d.close });
      }
      pos += d.length;
      continue;
    }
    if (c === '*' || c === '_') {
      const d = scanDelims(src, pos, max, c === '*');
      for (let k = 0; k < d.length; k += 1) {
        push({ type: 'text', text: c });
        delimiters.push({ marker: c, length: d.length, token: tokens.length - 1, end: -1, open: d.open, close: d.close });
      }
      pos += d.length;
      continue;
    }
    if (c === '[' || (c === '!' && src[pos + 1] === '[')) {
      const image = c === '!';
      const link = linkAt(src, image ? pos + 1 : pos, max);
      if (link) {
        // Images are dropped, as the server's sanitizer drops <img>.
        if (!image) push({ type: 'a', href: link.href, title: link.title, children: tokensToTree(tokenize(src, link.labelStart, link.labelEnd)) });
        pos = link.end;
        continue;
      }
    }
    if (c === '<') {
      const a = autolinkAt(src, pos, max);
      if (a) {
        push({ type: 'a', href: a.href, title: '', children: [{ type: 'text', text: a.text }] });
        pos = a.end;
        continue;
      }
    }
    if (c === '&') {
      const e = entityAt(src, pos);
      if (e) { pending += e[0]; pos += e[1]; continue; }
    }
    pending += c;
    pos += 1;
  }
  flush();
  balancePairs(delimiters);
  strikethrough(tokens, delimiters);
  emphasis(tokens, delimiters);
  return tokens;
}

// markdown-it's balance_pairs: match closers to openers (with the "rule of 3").
function balancePairs(delimiters) {
  const openersBottom = {};
  let headerIdx = 0;
  let lastTokenIdx = -2;
  const jumps = [];
  for (let closerIdx = 0; closerIdx < delimiters.length; closerIdx += 1) {
    const closer = delimiters[closerIdx];
    jumps.push(0);
    if (delimiters[headerIdx].marker !== closer.marker || lastTokenIdx !== closer.token - 1) headerIdx = closerIdx;
    lastTokenIdx = closer.token;
    if (!closer.close) continue;
    openersBottom[closer.marker] ||= [-1, -1, -1, -1, -1, -1];
    const bottomKey = (closer.open ? 3 : 0) + (closer.length % 3);
    const minOpenerIdx = openersBottom[closer.marker][bottomKey];
    let openerIdx = headerIdx - jumps[headerIdx] - 1;
    let newMinOpenerIdx = openerIdx;
    for (; openerIdx > minOpenerIdx; openerIdx -= jumps[openerIdx] + 1) {
      const opener = delimiters[openerIdx];
      if (opener.marker !== closer.marker || !opener.open || opener.end >= 0) continue;
      const oddMatch = (opener.close || closer.open) && (opener.length + closer.length) % 3 === 0 &&
        (opener.length % 3 !== 0 || closer.length % 3 !== 0);
      if (oddMatch) continue;
      const lastJump = openerIdx > 0 && !delimiters[openerIdx - 1].open ? jumps[openerIdx - 1] + 1 : 0;
      jumps[closerIdx] = closerIdx - openerIdx + lastJump;
      jumps[openerIdx] = lastJump;
      closer.open = false;
      opener.end = closerIdx;
      opener.close = false;
      newMinOpenerIdx = -1;
      lastTokenIdx = -2;
      break;
    }
    if (newMinOpenerIdx !== -1) openersBottom[closer.marker][bottomKey] = newMinOpenerIdx;
  }
}

function strikethrough(tokens, delimiters) {
  const lone = [];
  for (const start of delimiters) {
    if (start.marker !== '~' || start.end === -1) continue;
    const end = delimiters[start.end];
    tokens[start.token] = { type: 'open', tag: 's' };
    tokens[end.token] = { type: 'close', tag: 's' };
    const before = tokens[end.token - 1];
    if (before.type === 'text' && before.text === '~' && !before.escaped) lone.push(end.token - 1);
  }
  // "~~~~~" is "~" + "~~" + "~~": move each lone "~" after the closing tags that follow it.
  while (lone.length) {
    const i = lone.pop();
    let j = i + 1;
    while (j < tokens.length && tokens[j].type === 'close' && tokens[j].tag === 's') j += 1;
    j -= 1;
    if (i !== j) [tokens[i], tokens[j]] = [tokens[j], tokens[i]];
  }
}

function emphasis(tokens, delimiters) {
  for (let i = delimiters.length - 1; i >= 0; i -= 1) {
    const start = delimiters[i];
    if ((start.marker !== '_' && start.marker !== '*') || start.end === -1) continue;
    const end = delimiters[start.end];
    const strong = i > 0 && delimiters[i - 1].end === start.end + 1 && delimiters[i - 1].marker === start.marker &&
      delimiters[i - 1].token === start.token - 1 && delimiters[start.end + 1].token === end.token + 1;
    const tag = strong ? 'strong' : 'em';
    tokens[start.token] = { type: 'open', tag };
    tokens[end.token] = { type: 'close', tag };
    if (strong) {
      tokens[delimiters[i - 1].token] = { type: 'text', text: '' };
      tokens[delimiters[start.end + 1].token] = { type: 'text', text: '' };
      i -= 1;
    }
  }
}

function tokensToTree(tokens) {
  const root = { children: [] };
  const stack = [root];
  for (const t of tokens) {
    const top = stack[stack.length - 1];
    if (t.type === 'open') {
      const node = { type: t.tag, children: [] };
      top.children.push(node);
      stack.push(node);
    } else if (t.type === 'close') {
      stack.pop();
    } else if (t.type === 'text') {
      if (!t.text) continue;
      const last = top.children[top.children.length - 1];
      if (last && last.type === 'text') last.text += t.text;
      else top.children.push({ type: 'text', text: t.text });
    } else {
      top.children.push(t);
    }
  }
  return root.children;
}

// ---- DOM ------------------------------------------------------------------------------------------
const SAFE_PROTOCOLS = new Set(['http:', 'https:', 'mailto:']);

// nh3 keeps http, https and mailto URLs and relative ones; so do we, as the browser sees them.
function safeHref(href) {
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(href);
  if (scheme && !SAFE_PROTOCOLS.has(`${scheme[1].toLowerCase()}:`)) return null;
  try {
    return SAFE_PROTOCOLS.has(new URL(href, document.baseURI).protocol) ? href : null;
  } catch {
    return null;
  }
}

function appendInline(parent, nodes) {
  const doc = parent.ownerDocument;
  for (const n of nodes) {
    if (n.type === 'text') { parent.append(doc.createTextNode(n.text)); continue; }
    if (n.type === 'br') { parent.append(doc.createElement('br'), doc.createTextNode('\n')); continue; }
    if (n.type === 'code') { const code = doc.createElement('code'); code.textContent = n.text; parent.append(code); continue; }
    const el = doc.createElement(n.type); // em, strong, s, a
    if (n.type === 'a') {
      const href = safeHref(n.href);
      if (href != null) el.setAttribute('href', href);
      if (n.title) el.setAttribute('title', n.title);
      el.setAttribute('rel', 'noopener noreferrer nofollow');
    }
    appendInline(el, n.children);
    parent.append(el);
  }
}

function blockNode(doc, block, tight = false) {
  switch (block.type) {
    case 'paragraph': {
      if (tight) { // tight list items show their paragraphs without <p>
        const frag = doc.createDocumentFragment();
        appendInline(frag, parseInline(block.text));
        return frag;
      }
      const p = doc.createElement('p');
      appendInline(p, parseInline(block.text));
      return p;
    }
    case 'heading': {
      const h = doc.createElement(`h${block.level}`);
      appendInline(h, parseInline(block.text));
      return h;
    }
    case 'hr': return doc.createElement('hr');
    case 'code': {
      const pre = doc.createElement('pre');
      const code = doc.createElement('code');
      if (block.lang) code.className = `language-${block.lang}`;
      code.textContent = block.text;
      highlightCode(code);
      pre.append(code);
      return pre;
    }
    case 'blockquote': {
      const q = doc.createElement('blockquote');
      for (const child of block.children) q.append(blockNode(doc, child));
      return q;
    }
    case 'list': {
      const list = doc.createElement(block.ordered ? 'ol' : 'ul');
      if (block.ordered && block.first !== 1) list.setAttribute('start', String(block.first));
      for (const item of block.items) {
        const li = doc.createElement('li');
        for (const child of item) li.append(blockNode(doc, child, block.tight));
        list.append(li);
      }
      return list;
    }
    case 'table': {
      const table = doc.createElement('table');
      const row = (cells, tag) => {
        const tr = doc.createElement('tr');
        block.aligns.forEach((align, i) => {
          const cell = doc.createElement(tag);
          if (align) cell.setAttribute('style', `text-align:${align}`);
          appendInline(cell, parseInline((cells[i] || '').trim()));
          tr.append(cell);
        });
        return tr;
      };
      const thead = doc.createElement('thead');
      thead.append(row(block.head, 'th'));
      table.append(thead);
      if (block.rows.length) {
        const tbody = doc.createElement('tbody');
        for (const cells of block.rows) tbody.append(row(cells, 'td'));
        table.append(tbody);
      }
      return table;
    }
    default: return doc.createDocumentFragment();
  }
}

function splitLines(text) {
  const lines = text.replace(/\r\n?/g, '\n').replace(/\0/g, '\ufffd').split('\n');
  const openEnd = lines[lines.length - 1] !== '';
  if (!openEnd) lines.pop();
  return { lines, openEnd };
}

// The whole text as a fragment (used for tests; StreamView renders the same blocks).
export function renderMarkdown(text, doc = document) {
  const frag = doc.createDocumentFragment();
  const { lines, openEnd } = splitLines(text);
  for (const block of parseBlocks(lines, openEnd)) frag.append(blockNode(doc, block));
  return frag;
}

// Renders a growing text into `container`, re-rendering only the top-level blocks that changed.
export class StreamView {
  constructor(container) {
    this.container = container;
    this.rendered = []; // [{key, nodes}] per top-level block, in order
  }

  update(text) {
    const doc = this.container.ownerDocument;
    const { lines, openEnd } = splitLines(text);
    const blocks = parseBlocks(lines, openEnd);
    // A block's key: its lines. Blocks that may hold an open code block also depend on the
    // blank lines after them and on whether the text ends with a newline.
    const keyOf = (b, i) => {
      if (!['code', 'list', 'blockquote'].includes(b.type)) return lines.slice(b.start, b.end).join('\n');
      const next = i + 1 < blocks.length ? blocks[i + 1].start : lines.length;
      return `${lines.slice(b.start, next).join('\n')}${next === lines.length && openEnd ? '' : '\n'}`;
    };
    let same = 0;
    while (same < blocks.length && same < this.rendered.length && this.rendered[same].key === keyOf(blocks[same], same)) same += 1;
    if (same === this.rendered.length && same === blocks.length) return;
    if (same === 0 && this.rendered.length === 0) this.container.replaceChildren(); // adopt server HTML
    const stale = this.rendered.splice(same);
    const fresh = blocks.slice(same).map((b, k) => {
      const node = blockNode(doc, b);
      return { key: keyOf(b, same + k), nodes: node.nodeType === 11 ? [...node.childNodes] : [node] };
    });
    // Keep a re-rendered code block's <pre> (and so its horizontal scroll): swap only its <code>.
    if (stale.length && fresh.length && isPre(stale[0].nodes[0]) && isPre(fresh[0].nodes[0])) {
      stale[0].nodes[0].replaceChildren(...fresh[0].nodes[0].childNodes);
      fresh[0].nodes = stale[0].nodes;
      stale.shift();
    }
    const after = stale.length ? stale[0].nodes[0] : null;
    for (const { nodes } of fresh) {
      for (const n of nodes) {
        if (n.parentNode === this.container) continue; // the kept <pre>
        this.container.insertBefore(n, after);
      }
    }
    for (const { nodes } of stale) for (const n of nodes) n.remove();
    this.rendered.push(...fresh);
  }
}

const isPre = (node) => node && node.nodeName === 'PRE';
