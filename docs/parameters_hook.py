"""MkDocs hook: the parameter reference (docs/parameters.md) is generated from the pipelines' own
interfaces, the parameters declared once in pipelines/parameters.py, so the docs cannot drift from them."""

import html
import json

MARK = "<!-- parameters -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARK not in markdown:
        return markdown
    from tlpipe.cluster import pipeline, pipelines
    from tlpipe.preflight import parameters

    sections = []
    for name in pipelines():
        built = pipeline(name)
        # Escaped: a meaning such as imagefolder:<folder> would otherwise be read as an HTML tag.
        rows = [f"| `{p['name']}` | {p['type']} | `{json.dumps(p['default'])}` | {html.escape(p['meaning'], quote=False)} |"
                for p in parameters(built)]
        sections.append(f"## {name}\n\n{built.description}\n\n| parameter | type | default | meaning |\n|---|---|---|---|\n"
                        + "\n".join(rows))
    return markdown.replace(MARK, "\n\n".join(sections))
