"""The HTML of `launch ui`'s pages and of `launch report`'s file: one shell, one script (static/app.js).

The page's data travels as JSON inside a `<script type="application/json">` block that the browser
never runs (`<`, `>` and `&` are written as JSON escapes, so no text in it can close the block);
app.js builds the document from it with text nodes only. A run's own text (a config value, an
error, a metric name) is therefore always shown as text, never read as HTML or script. The
served pages forbid inline script by their Content-Security-Policy; the report, one file that
opens offline, allows only its own inline script and no request to anywhere.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"

# The server's pages: scripts only from the server itself, none inline (defence in depth).
SERVED_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
              "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
# The report: its own inline script and styles, and no network at all.
REPORT_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
              "base-uri 'none'; form-action 'none'")


BRAND_LINK = '<a class="brand" href="/">launch</a>'
BRAND = '<span class="brand">launch</span>'  # the report: a file links nowhere


def plotly_js() -> Path:
    """Plotly's own bundled, offline build (the `plotly` package ships it)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def json_block(data: Any) -> str:
    """JSON that is safe inside a <script> block: nothing in it can end the block or open a comment."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def served_page(kind: str, title: str, data: Any, api: str, token_query: str = "") -> str:
    """A page of `launch ui`: the script and Plotly come from /static, the data refreshes from `api`."""
    return _shell(kind, title, data, live=True, api=api + token_query,
                  head='<link rel="stylesheet" href="/static/app.css">',
                  scripts='<script src="/static/plotly.min.js"></script><script src="/static/app.js"></script>')


def report_page(title: str, data: Any) -> str:
    """`launch report`: the run page as one self-contained file (Plotly, script, styles and data inline)."""
    inline = [plotly_js().read_text(), (STATIC / "app.js").read_text()]
    for code in inline:
        if "</script" in code.lower():  # would end the block early: Plotly's build has none (checked here)
            raise RuntimeError("an inline script holds '</script': the report would break")
    head = (f'<meta http-equiv="Content-Security-Policy" content="{html.escape(REPORT_CSP)}">'
            f"<style>{(STATIC / 'app.css').read_text()}</style>")
    return _shell("run", title, data, live=False, api="", head=head,
                  scripts="".join(f"<script>{code}</script>" for code in inline))


def _shell(kind: str, title: str, data: Any, *, live: bool, api: str, head: str, scripts: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{html.escape(title)}</title>{head}</head>"
        f"<body data-page=\"{html.escape(kind)}\" data-live=\"{int(live)}\" data-api=\"{html.escape(api)}\">"
        f"<header>{BRAND_LINK if live else BRAND}"
        "<span id=\"crumb\"></span>"
        "<span id=\"updated\"></span></header><main id=\"app\"><p>Loading…</p></main>"
        f"<script id=\"launch-data\" type=\"application/json\">{json_block(data)}</script>"
        f"{scripts}</body></html>\n"
    )
