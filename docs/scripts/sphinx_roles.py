"""Griffe extension (mkdocs.yml, mkdocstrings ``extensions``): Sphinx roles in docstrings as code.

fex's docstrings name objects the Sphinx way (``:class:`~fex.blackbox.BlackBox```, ``:meth:`attach```);
mkdocstrings renders Markdown, where those would show as raw text. Each role becomes inline code
(``~`` keeps the last dotted part, as Sphinx shows it).
"""
import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|obj|exc|data|const):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
