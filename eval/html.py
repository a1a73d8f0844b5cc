"""A self-contained HTML page from the report's Markdown: images inlined as base64, no
network, no external CSS or scripts. Handles the subset `eval.report` writes: headings,
paragraphs, bullet lists, pipe tables, images, `code` and **bold**."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}img{max-width:100%}
"""


def _inline(text: str, folder: Path) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)

    def image(match: re.Match) -> str:
        alt, name = match.group(1), html.unescape(match.group(2))
        path = folder / name
        if "/" in name or "\\" in name or not path.is_file():  # only the report's own files
            return html.escape(alt)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{alt}" src="data:image/png;base64,{data}">'

    return re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", image, text)


def _table(lines: list[str], folder: Path) -> str:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= {"-", ":"} for c in r)]
    out = ["<table><thead><tr>"]
    out += [f"<th>{_inline(c, folder)}</th>" for c in head]
    out.append("</tr></thead><tbody>")
    for row in body:
        out.append("<tr>" + "".join(f"<td>{_inline(c, folder)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def markdown_to_html(markdown: str, folder: Path, title: str = "Cascade report") -> str:
    """The page for `markdown`, with images read from `folder`."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip(), folder)}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block, folder))
        elif line.lstrip().startswith("- "):
            items = []
            while i < len(lines) and (lines[i].lstrip().startswith("- ") or lines[i][:2] == "  "):
                if lines[i].lstrip().startswith("- "):
                    items.append(lines[i].lstrip()[2:])
                else:
                    items[-1] += " " + lines[i].strip()
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(t, folder)}</li>" for t in items) + "</ul>")
        else:
            block = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|")):
                block.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(block), folder)}</p>")
    body = "\n".join(out)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_html(folder: Path) -> Path:
    """folder/report.html from folder/report.md and the PNGs beside it."""
    markdown = (folder / "report.md").read_text(encoding="utf-8")
    path = folder / "report.html"
    path.write_text(markdown_to_html(markdown, folder), encoding="utf-8")
    return path
