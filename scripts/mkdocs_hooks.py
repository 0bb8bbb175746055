"""mkdocs hooks for the API reference (mkdocs.yml ``hooks:``).

brpc's docstrings use Sphinx cross-reference roles (``:class:`Server```,
``:meth:`~brpc.Server.close```). mkdocstrings renders the backticked part as code
but leaves the role name in front of it; this drops the role and, as Sphinx does
for a leading ``~``, shows only the last component of the name.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):<code>(~?)([^<]*)</code>")


def _replace(match: re.Match[str]) -> str:
    short, name = match.group(1), match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if short else name}</code>"


def on_page_content(html: str, **_: Any) -> str:
    return _ROLE.sub(_replace, html)
