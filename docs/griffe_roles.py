"""Griffe extension for the API pages: Sphinx roles in docstrings become code spans.

The docstrings are written for ``help()`` and for mkdocstrings alike, with a few Sphinx
roles (``:func:`shift```, ``:class:`~torchshift2.Shift1d```); Markdown has no roles, so
``:role:`~a.b.name``` is rendered as ```name``` and ``:role:`a.b``` as ```a.b```.
"""

import re

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj|py:\w+):`(~?)([^`]+)`")


def _replace(match: "re.Match") -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_replace, obj.docstring.value)
