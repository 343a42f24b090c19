"""The browser's markdown renderer (static/js/render.js: markdown-it, DOMPurify and highlight.js
from static/vendor) against the server's (rooms/rendering.py), in real Chromium: the same HTML for
a corpus of answers, for every prefix while streaming, and nothing executable whatever the input."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rooms.rendering import render_markdown

pytestmark = [pytest.mark.browser]

STATIC = Path(__file__).resolve().parents[2] / "static"

CORPUS = [
    'Hello **world**, this is *emphasis*, `code`, ~~gone~~ and [a link](https://example.com "Example").',
    "# Title\n\n## Sub *title* ##\n\nSetext\n===\n\nAnother\n---\n\ntext",
    "- one\n- two\n  - nested *a*\n  - nested b\n- three\n\n1. first\n2. second\n\n3) third\n4) fourth",
    "- loose\n\n- list\n\n  with two paragraphs\n- end",
    "5. starts at five\n6. six",
    "| Name | Qty | Note |\n|:-----|----:|:----:|\n| apple | 3 | `fresh` |\n| pear | 10 | **ripe** |\n| plum |",
    "text before\n| a | b |\n|---|---|\n| 1 | 2 \\| 3 |\nrow without pipes\n\nafter",
    '```python\ndef hello(name: str) -> None:\n    # greet\n    print(f"hi {name}")  # 42\n```\n\n```js\nconst x = `t ${1}`; // c\n```',
    "```\nno language\n  indented\n```\n\n    indented code\n    block\n\nafter",
    "~~~sql\nSELECT * FROM t WHERE id = 1; -- c\n~~~",
    "> a quote\n> with **bold**\nlazy line\n\n> > nested\n\n---\n\n***",
    "Line with two spaces  \nnext line\\\nthird\nsoft",
    "Autolinks <https://example.com/a?b=c&d=e> and <me@example.com>, not <javascript:alert(1)>.",
    "Entities: &amp; &copy; &#65; &#x263A; &#0; &nosuch; and escapes \\*not em\\* \\_ \\\\ \\a",
    "*a **b** c* __strong__ _em_ snake_case_word **unclosed *x* ***both*** *a*b*c*",
    "[rel](/docs/page) [spaces](<a b>) [unicode](https://e.com/ä) [ftp](ftp://x) [empty]() [js](javascript:alert(1))",
    "[bad](JaVaScRiPt:alert(1)) [ent](&#106;avascript:alert(1)) [data](data:text/html,<b>x</b>) [img](data:image/png;base64,AAAA)",
    "![alt text](https://example.com/x.png) image then text [link with `code` and *em*](https://e.com)",
    "<script>alert(1)</script> <img src=x onerror=alert(1)> <b>raw</b>",
    '```html\n</code></pre><img src=x onerror="alert(1)">\n```',
    "Nested [link [inner](https://a.com)](https://b.com) and [brackets [x] ok](https://c.com)",
    "A paragraph\n# heading interrupts\n- list interrupts\n2. no\n1. yes",
    "- [ ] task\n- [x] done\n\n* star\n+ plus\n- dash",
    "`` code with ` tick `` and ` spaced ` and `unclosed",
    "Title with trailing hashes ###\n\n#no space\n\n####### seven",
    "1. item\n\n   ```bash\n   echo $HOME # comment\n   ```\n2. item two\n   continued",
    "Tabs:\n\n\tcode with tab\n\n-\ttab item",
    "Emoji 🎉 **bold🎉** _ünïcödé_ — dash “quotes” ...",
    "a ~~b~~ ~c~ ~~~d~~~ ~~~~e~~~~",
    "```unclosed\ncode that is still streaming",
    '[title with spaces](https://example.com " Example ") [reference][ref] [ref]\n\n[ref]: https://e.com/ä "Ref"',
]


# Loads the renderers into a page as window.__md, with `canon`: a DOM in a canonical form
# (sorted attributes, no whitespace between block elements) and `server`: server HTML in it.
SETUP_JS = """async () => {
        const md = await import('STATIC/js/render.js');
        const hl = md;
        // A canonical form: sorted attributes, no whitespace between block elements.
        const canon = (root) => {
          const out = [];
          const walk = (n) => {
            if (n.nodeType === 3) { out.push(n.data.replace(/&/g, '&amp;').replace(/</g, '&lt;')); return; }
            if (n.nodeType !== 1 && n.nodeType !== 11) return;
            const tag = n.nodeType === 1 ? n.nodeName.toLowerCase() : null;
            if (tag) out.push('<' + tag + [...n.attributes].map((a) => ` ${a.name}="${a.value}"`).sort().join('') + '>');
            n.childNodes.forEach(walk);
            if (tag && !['br', 'hr'].includes(tag)) out.push('</' + tag + '>');
          };
          walk(root);
          const block = '(?:p|ul|ol|li|pre|blockquote|h[1-6]|table|thead|tbody|tr|th|td|hr|br)';
          return out.join('').replace(new RegExp(`\\\\s*(</?${block}\\\\b[^>]*>)\\\\s*`, 'g'), '$1');
        };
        const server = (html) => {
          const tpl = document.createElement('template');
          tpl.innerHTML = html; // inert: a template's content never runs or loads anything
          hl.highlightWithin(tpl.content);
          return canon(tpl.content);
        };
        window.__md = { md, hl, canon, server };
    }
"""


@pytest.fixture(scope="module")
def static_server() -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(STATIC))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def md_page(chromium: Any, static_server: str) -> Iterator[Any]:
    context = chromium.new_context()
    page = context.new_page()
    page.goto(static_server + "/css/app.css")
    page.evaluate(SETUP_JS.replace("STATIC", ""))
    yield page
    context.close()


def client_html(page: Any, text: str) -> str:
    return page.evaluate("(t) => __md.canon(__md.md.renderMarkdown(t))", text)


def server_html(page: Any, text: str) -> str:
    return page.evaluate("(h) => __md.server(h)", render_markdown(text))


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_the_browser_renders_markdown_exactly_like_the_server(md_page, text):
    assert client_html(md_page, text) == server_html(md_page, text)


def test_a_streamed_answer_matches_a_fresh_render_at_every_prefix(md_page):
    text = "\n\n".join(CORPUS[:12])
    mismatches = md_page.evaluate(
        """(text) => {
        const box = document.createElement('div');
        const view = new __md.md.StreamView(box);
        const bad = [];
        for (let n = 1; n <= text.length; n += 3) {
          const prefix = text.slice(0, n);
          view.update(prefix);
          const fresh = document.createElement('div');
          fresh.append(__md.md.renderMarkdown(prefix));
          if (__md.canon(box) !== __md.canon(fresh)) bad.push(n);
        }
        return bad.slice(0, 5);
    }""",
        text,
    )
    assert mismatches == []


def test_streaming_keeps_the_nodes_of_finished_blocks(md_page):
    kept = md_page.evaluate(
        """() => {
        const box = document.createElement('div');
        const view = new __md.md.StreamView(box);
        view.update('# Title\\n\\nFirst paragraph.\\n\\n```py\\nx = 1');
        const [h1, p, pre] = box.children;
        view.update('# Title\\n\\nFirst paragraph.\\n\\n```py\\nx = 1\\ny = 2\\n```\\n\\n- a');
        return [box.children[0] === h1, box.children[1] === p, box.children[2] === pre,
                box.querySelector('pre code').textContent, box.children.length];
    }"""
    )
    assert kept == [True, True, True, "x = 1\ny = 2\n", 4]


def test_code_blocks_are_highlighted(md_page):
    spans = md_page.evaluate(
        """() => {
        const f = __md.md.renderMarkdown('```python\\ndef f(x):\\n    return "s"  # c\\n```');
        return [...f.querySelectorAll('span')].map((s) => [s.className, s.textContent]);
    }"""
    )
    assert spans == [
        ["hljs-keyword", "def"],
        ["hljs-title function_", "f"],
        ["hljs-params", "x"],
        ["hljs-keyword", "return"],
        ["hljs-string", '"s"'],
        ["hljs-comment", "# c"],
    ]


HOSTILE = [
    "[x](javascript:alert(1))",
    "[x](JAVASCRIPT:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](java\tscript:alert(1))",
    "[x](<javascript:alert(1)>)",
    "[x](vbscript:x)",
    "[x](data:text/html,<script>x</script>)",
    "<javascript:alert(1)>",
    "<svg onload=alert(1)>",
    "<img src=x onerror=alert(1)>",
    "<a href='javascript:x'>a</a>",
    '```"><img src=x onerror=alert(1)>\ncode\n```',
    "```js\n</code><script>alert(1)</script>\n```",
    "| <img src=x onerror=alert(1)> | [x](javascript:1) |\n|---|---|\n| <script>1</script> | b |",
    '[x](https://e.com "\\" onmouseover=alert(1)")',
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#60;img src=x onerror=alert(1)&#62;",
]


def test_hostile_markdown_renders_inert_at_every_prefix(md_page):
    text = "\n\n".join(HOSTILE)
    found = md_page.evaluate(
        """(text) => {
        const box = document.createElement('div');
        document.body.append(box);
        const view = new __md.md.StreamView(box);
        const bad = [];
        for (let n = 1; n <= text.length; n += 1) {
          view.update(text.slice(0, n));
          for (const el of box.querySelectorAll('*')) {
            if (!['P', 'A', 'CODE', 'PRE', 'SPAN', 'TABLE', 'THEAD', 'TBODY', 'TR', 'TH', 'TD', 'EM', 'STRONG', 'BR'].includes(el.nodeName)) bad.push(el.nodeName);
            for (const a of el.attributes) {
              if (a.name.startsWith('on') || (a.name === 'href' && !/^(https?:|mailto:|[^:]*$)/i.test(a.value))) bad.push(a.name + '=' + a.value);
            }
          }
        }
        return [...new Set(bad)];
    }""",
        text,
    )
    assert found == []
    assert md_page.evaluate("window.__xss === undefined")


def test_every_highlighted_language_tokenizes_a_sample(md_page):
    langs = [
        "python",
        "js",
        "ts",
        "json",
        "bash",
        "sql",
        "go",
        "rust",
        "c",
        "java",
        "ruby",
        "html",
        "css",
        "yaml",
        "toml",
        "diff",
        "dockerfile",
    ]
    sample = 'if x == "s": # c\n  // c\n  - 42 <a href="x">\n+ [k] = 1\nFROM y'
    counts = md_page.evaluate(
        """([langs, sample]) => langs.map((lang) => {
        const code = __md.md.renderMarkdown('```' + lang + '\\n' + sample + '\\n```').querySelector('code');
        return [lang, code.textContent === sample + '\\n', code.querySelectorAll('span').length > 0];
    })""",
        [langs, sample],
    )
    assert counts == [[lang, True, True] for lang in langs]
