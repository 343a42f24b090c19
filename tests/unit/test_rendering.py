"""The server's markdown renderer: what it keeps and what it drops (the browser's streaming
renderer is checked against it in tests/browser/test_markdown.py)."""

from __future__ import annotations

from rooms.rendering import render_markdown


def test_an_ordered_list_keeps_its_start_number():
    assert render_markdown("3. three\n4. four").startswith('<ol start="3">\n<li>three</li>')


def test_code_blocks_keep_their_language_class_for_the_browser_highlighter():
    html = render_markdown("```python\nx = '<b>'\n```")
    assert html == "<pre><code class=\"language-python\">x = '&lt;b&gt;'\n</code></pre>\n"


def test_table_alignment_is_kept_as_a_text_align_style():
    html = render_markdown("| a | b |\n|:--|--:|\n| 1 | 2 |")
    assert '<th style="text-align:left">a</th>' in html and '<td style="text-align:right">2</td>' in html


def test_unsafe_links_and_images_do_not_survive():
    html = render_markdown(
        "[x](javascript:alert(1)) [y](ftp://host/f) ![i](https://e.com/i.png) <b onclick=x>b</b>"
    )
    assert "javascript:" not in html.replace("[x](javascript:alert(1))", "")
    assert "<a rel=" in html and "ftp:" not in html  # the link stays, its href goes
    assert "<img" not in html and "<b" not in html
