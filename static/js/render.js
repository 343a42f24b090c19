// render.js: message markdown to safe DOM in the browser, configured like the server.
//
// The server renders with markdown-it-py ("js-default": raw HTML stays text, tables and
// strikethrough on, no linkify, no typographer) and cleans the HTML with nh3
// (rooms/rendering.py). Here the JavaScript original, markdown-it, renders with the same
// options (markdown-it-py ports the very version vendored in static/vendor/markdown-it), and
// DOMPurify cleans with nh3's allowlist: the same tags, the same attributes per tag, links only
// http, https, mailto or relative, and rel="noopener noreferrer nofollow" on every link. So a
// streamed answer is the DOM the server's HTML gives, and swapping that HTML in when the
// answer completes changes nothing on screen (tests/browser/test_markdown.py checks it).
//
// Code blocks are highlighted by highlight.js, in the browser only: the same function runs on
// the server's HTML and on streamed blocks, so both look the same.
//
// Streaming: StreamView parses the whole text on every update (markdown-it needs the whole
// text: a link reference or a setext underline changes earlier blocks), renders each top-level
// block to an HTML string, and builds DOM (sanitize, highlight) only for the blocks whose HTML
// changed - in practice the last, still open one.

import '../vendor/markdown-it/markdown-it.min.js'; // a UMD build: it defines globalThis.markdownit
import DOMPurify from '../vendor/dompurify/purify.es.mjs';
import hljs from '../vendor/highlight.js/highlight.min.js';
import dart from '../vendor/highlight.js/languages/dart.min.js';
import dockerfile from '../vendor/highlight.js/languages/dockerfile.min.js';
import scala from '../vendor/highlight.js/languages/scala.min.js';

const md = globalThis.markdownit({ html: false, linkify: false, typographer: false });

// nh3's allowlist in rooms/rendering.py (_TAGS, _ATTRIBUTES, url_schemes, link_rel).
const TAGS = ['p', 'br', 'hr', 'em', 'strong', 'del', 's', 'code', 'pre', 'blockquote', 'ul', 'ol',
  'li', 'a', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'span'];
const ATTRIBUTES = { A: ['href', 'title'], CODE: ['class'], OL: ['start'], TH: ['style'], TD: ['style'] };
const LINK_REL = 'noopener noreferrer nofollow';
const PURIFY = {
  ALLOWED_TAGS: TAGS,
  ALLOWED_ATTR: ['href', 'title', 'class', 'start', 'style'],
  // http, https, mailto, or no scheme at all (relative), like nh3's url_schemes
  ALLOWED_URI_REGEXP: /^(?:(?:https?|mailto):|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

// An instance of our own, so these hooks apply to message markdown only.
const purify = DOMPurify(window);
purify.addHook('uponSanitizeAttribute', (node, data) => {
  if (!ATTRIBUTES[node.nodeName]?.includes(data.attrName)) data.keepAttr = false;
  // DOMPurify trims attribute values, nh3 does not: a link title keeps its spaces.
  else if (data.attrName === 'title') data.attrValue = node.getAttribute('title');
});
purify.addHook('afterSanitizeAttributes', (node) => {
  if (node.nodeName === 'A') node.setAttribute('rel', LINK_REL);
});

hljs.registerLanguage('dart', dart);
hljs.registerLanguage('dockerfile', dockerfile);
hljs.registerLanguage('scala', scala);
// Names that were highlighted before highlight.js came in and that it does not know itself.
hljs.registerAliases(['python3', 'py3'], { languageName: 'python' });
hljs.registerAliases(['node'], { languageName: 'javascript' });
hljs.registerAliases(['postgres', 'postgresql', 'sqlite', 'mysql', 'psql'], { languageName: 'sql' });
hljs.registerAliases(['vue', 'jinja', 'django'], { languageName: 'xml' });
hljs.registerAliases(['cfg', 'conf'], { languageName: 'ini' });
hljs.registerAliases(['docker'], { languageName: 'dockerfile' });

// Highlight one <code class="language-X"> in place, from its text; unknown languages stay plain.
export function highlightCode(code) {
  const lang = /(?:^|\s)language-(\S+)/.exec(code.className);
  if (!lang || !hljs.getLanguage(lang[1])) return;
  // highlight.js escapes the text and adds only <span class="hljs-...">: no markup of ours.
  code.innerHTML = hljs.highlight(code.textContent, { language: lang[1], ignoreIllegals: true }).value;
  code.classList.add('hljs');
}

// Highlight every code block under `root` that is not highlighted yet.
export function highlightWithin(root) {
  for (const code of root.querySelectorAll('pre > code[class*="language-"]:not(.hljs)')) highlightCode(code);
}

// Sanitized, highlighted DOM for an HTML string from markdown-it.
function toFragment(html) {
  const frag = purify.sanitize(html, PURIFY);
  highlightWithin(frag);
  return frag;
}

// The top-level blocks of `text`, each as the HTML string md.render() would give for it
// (md.render(text) is these strings joined).
export function renderBlocks(text) {
  const env = {};
  const tokens = md.parse(text, env);
  const blocks = [];
  let start = 0;
  tokens.forEach((token, i) => {
    if (token.level === 0 && token.nesting !== 1) { // a top-level block ends here
      blocks.push(md.renderer.render(tokens.slice(start, i + 1), md.options, env));
      start = i + 1;
    }
  });
  return blocks;
}

// The whole text as a sanitized, highlighted fragment (StreamView renders the same blocks).
export function renderMarkdown(text) {
  return toFragment(renderBlocks(text).join(''));
}

// Renders a growing text into `container`, re-rendering only the top-level blocks that changed.
export class StreamView {
  constructor(container) {
    this.container = container;
    this.rendered = []; // [{html, nodes}] per top-level block, in order
  }

  update(text) {
    const blocks = renderBlocks(text);
    let same = 0;
    while (same < blocks.length && same < this.rendered.length && this.rendered[same].html === blocks[same]) same += 1;
    if (same === this.rendered.length && same === blocks.length) return;
    if (this.rendered.length === 0) this.container.replaceChildren(); // adopt the server's HTML
    const stale = this.rendered.splice(same);
    const fresh = blocks.slice(same).map((html) => ({ html, nodes: [...toFragment(html).childNodes] }));
    // Keep a re-rendered code block's <pre> (and so its horizontal scroll): swap only its <code>.
    if (stale.length && fresh.length && isPre(stale[0].nodes[0]) && isPre(fresh[0].nodes[0])) {
      const [pre] = stale[0].nodes;
      pre.replaceChildren(...fresh[0].nodes[0].childNodes);
      fresh[0].nodes[0] = pre;
      stale[0].nodes.shift();
    }
    const after = stale.find(({ nodes }) => nodes.length)?.nodes[0] ?? null;
    for (const { nodes } of fresh) {
      for (const n of nodes) if (n.parentNode !== this.container) this.container.insertBefore(n, after);
    }
    for (const { nodes } of stale) for (const n of nodes) n.remove();
    this.rendered.push(...fresh);
  }
}

const isPre = (node) => node != null && node.nodeName === 'PRE';
