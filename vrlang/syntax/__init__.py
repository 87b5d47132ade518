"""Front end: source text -> AST."""

from vrlang.syntax.parse import parse_program, parse_spec

__all__ = ["parse_program", "parse_spec"]
