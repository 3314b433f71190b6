"""HTML pages from the templates in kdeval/report/templates, with Jinja2 autoescaping always on.

Every string that comes from data (category, file and model names, paths, settings) reaches a page
through an escaped `{{ }}` or through the DOM's textContent/setAttribute in the page's script;
no template marks data `|safe`. Static script and style files are pulled in with `{% include %}`,
so a page is one file with no network request.
"""

from __future__ import annotations

import functools
import json
import secrets
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("kdeval.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["url"] = relative_url
    return env


def render(template: str, **context) -> str:
    return _environment().get_template(template).render(**context)


def relative_url(path: str) -> str:
    """A relative path as a URL: each part percent-encoded (quotes, '#', '?', spaces), '/' kept."""
    return quote(str(path).replace("\\", "/"), safe="/")


def script_assignment(name: str, payload) -> str:
    """A JavaScript file that assigns one JSON document to window[name]: the page reads its data
    with <script src>, which browsers allow from file:// where fetch() of a local file is blocked.
    JSON is valid JavaScript; '<' is escaped too, so the text is also safe if ever inlined."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f"window[{json.dumps(name)}] = {text};\n"


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def content_security_policy(nonce: str | None = None) -> str:
    """A second line of defence behind escaping: no network at all (connect, fonts, frames), images
    only from the page's own folder, and scripts only those the page was written with (its nonce)."""
    scripts = f"'nonce-{nonce}'" if nonce else "'none'"
    return (f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; img-src 'self' file:; "
            "base-uri 'none'; form-action 'none'")
