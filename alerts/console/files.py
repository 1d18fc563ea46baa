"""The console's own files, found where the service will look for them: every template the views
render, the templates those extend or include, and the static files they link.

`vaktrom-alerts --check` (check mode, runtime/stage.py) calls `missing_files()`, so an image that
left a template or a vendored script out fails at its check, not on a nurse's first page.
"""

from __future__ import annotations

import re
from pathlib import Path

from jinja2 import Environment, TemplateSyntaxError, meta

__all__ = ["missing_files"]

HERE = Path(__file__).resolve().parent
_RENDERED = re.compile(r"[\"']([a-z_]+\.html)[\"']")  # a template name in a view's source
_STATIC = re.compile(r"[\"']/static/([^\"'?#]+)")  # href="/static/console.css"


def missing_files(root: Path = HERE) -> list[str]:
    """What the console needs under `root` and does not find (paths relative to `root`), or a
    template that does not parse; empty when everything is there."""
    templates, static = root / "templates", root / "static"
    wanted = {name for source in root.glob("*.py") for name in _RENDERED.findall(source.read_text())}
    wanted |= {p.name for p in templates.glob("*.html")}
    problems: list[str] = []
    env = Environment(autoescape=True)
    seen: set[str] = set()
    while wanted - seen:
        name = min(wanted - seen)
        seen.add(name)
        path = templates / name
        if not path.is_file():
            problems.append(f"templates/{name}")
            continue
        source = path.read_text(encoding="utf-8")
        try:
            tree = env.parse(source, name=name)
        except TemplateSyntaxError as exc:
            problems.append(f"templates/{name} does not parse: {exc.message} (line {exc.lineno})")
            continue
        wanted |= {ref for ref in meta.find_referenced_templates(tree) if ref is not None}
        problems += [f"static/{link}" for link in _STATIC.findall(source) if not (static / link).is_file()]
    return sorted(set(problems))
