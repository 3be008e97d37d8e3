"""The key reference of a config: each field's comment, type and default, and the table in ``configs/README.md``.

Comments are read from the dataclass source, so the table cannot drift from the code (a test checks it).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing

import yaml

from detkit.config.core import plain, type_name
from detkit.config.sections import ExperimentConfig

__all__ = ["config_reference", "config_reference_markdown", "field_comments"]


def field_comments(cls: type) -> dict[str, str]:
    """The one-line comment of each field of dataclass ``cls`` (trailing, or the line above it)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    class_def = ast.parse(source).body[0]
    out = {}
    for node in class_def.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = comments.get(node.end_lineno) or comments.get(node.lineno - 1, "")
            out[node.target.id] = text
    return out


def config_reference(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows ``(dotted key, type, default, comment)`` for every leaf key, for configs/README.md."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    defaults = cls()
    rows = []
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            rows.extend(config_reference(annotation, prefix + f.name + "."))
            continue
        default = plain(getattr(defaults, f.name))
        rows.append((prefix + f.name, type_name(annotation), yaml.safe_dump(default, default_flow_style=True).strip()
                     .removesuffix("...").strip(), comments.get(f.name, "")))
    return rows


def config_reference_markdown() -> str:
    """Markdown table of every config key (what ``configs/README.md`` embeds between its markers)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, typed, default, comment in config_reference():
        cells = [f"`{key}`", typed.replace("|", "\\|"), f"`{default}`", comment.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
