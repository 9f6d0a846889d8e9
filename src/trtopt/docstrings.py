"""The docstring written under each recipe key and pass option, read from the source only when
a schema or ``trtopt passes`` shows it. pydantic's ``use_attribute_docstrings`` reads them as
each class is made (on Python < 3.13 by walking frames and tokenizing the class's source):
a fifth of ``trtopt validate``'s work, for text that validating never shows."""

from __future__ import annotations

import ast
import inspect
import linecache
import sys
from functools import cache
from typing import Any


def describe_fields(schema: dict[str, Any], model: type) -> None:
    """pydantic's ``json_schema_extra`` hook: give each property of ``model``'s JSON schema the
    docstring under its declaration, where it has no description of its own."""
    for name, prop in schema.get("properties", {}).items():
        doc = field_doc(model, name)
        if doc:
            prop.setdefault("description", doc)


def field_doc(model: type, name: str) -> str | None:
    """The docstring under field ``name``'s declaration in the nearest class that declares it
    (a subclass that declares it again without one has none), as pydantic would keep it."""
    for cls in model.__mro__:
        if name in inspect.get_annotations(cls):
            return attribute_docs(cls).get(name)
    return None


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings right under the annotated attributes of ``cls``'s own body, cleaned as
    ``inspect.cleandoc`` does; none where its source cannot be read."""
    node = _class_node(cls)
    if node is None:
        return {}
    docs = {}
    for statement, after in zip(node.body, node.body[1:]):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[statement.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _class_node(cls: type) -> ast.ClassDef | None:
    """The definition of ``cls`` in its module's source: the first class statement with its
    qualified name (what ``inspect.getsource`` finds on Python < 3.13)."""
    filename = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return _classes(filename).get(cls.__qualname__) if filename else None


@cache
def _classes(filename: str) -> dict[str, ast.ClassDef]:
    """Every class statement of a module's source by qualified name (a function's own classes
    under ``f.<locals>.``), the first where a name repeats; none where the source is missing
    or does not parse."""
    try:
        tree = ast.parse("".join(linecache.getlines(filename)), filename)
    except (SyntaxError, ValueError):
        return {}
    found: dict[str, ast.ClassDef] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                found.setdefault(prefix + child.name, child)
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, f"{prefix}{child.name}.<locals>.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found
