"""MkDocs hooks for the documentation site (mkdocs.yml `hooks:`).

d2lft's docstrings name other objects with Sphinx roles (``:func:`d2lft.predict```),
which Markdown shows as a stray ``:func:`` before the code: drop the role, keep the code.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):(<code>)")


def on_page_content(html, **kwargs):
    return _ROLE.sub(r"\1", html)
