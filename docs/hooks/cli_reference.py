"""MkDocs hook: the command-line reference, generated from the argparse parsers.

A page that holds a marker line such as ``<!-- cli: sweep -->`` gets, in its place,
the options of that command as its parser knows them when the site is built: every
group, every option with its metavar or choices, its help and its default, expanded by
the parser's own help formatter (the same text ``--help`` prints). Nothing of it is
written by hand, so the page follows every change to the flags.

Commands: ``sweep`` (``ablations.arguments.build_parser``), ``measure``
(``ablations.measure.build_parser``) and ``analysis`` (the parser that
``python -m analysis`` builds inside its ``main``, caught before it parses anything).
"""
from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

MARKER = re.compile(r"^<!-- cli: (\w+) -->$", re.M)


class _Caught(Exception):
    def __init__(self, parser):
        super().__init__("parser caught")
        self.parser = parser


def _analysis_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m analysis``: its ``main`` runs until ``parse_args``,
    which hands the parser over instead of parsing."""
    import analysis.__main__ as entry

    def catch(self, *args, **kwargs):
        raise _Caught(self)

    saved = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch
    try:
        entry.main([])
    except _Caught as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_args = saved
    raise RuntimeError("python -m analysis built no parser")


def parser_for(command: str) -> argparse.ArgumentParser:
    """The parser behind ``command``: sweep, measure or analysis."""
    if command == "sweep":
        from ablations import arguments
        return arguments.build_parser()
    if command == "measure":
        from ablations import measure
        return measure.build_parser()
    if command == "analysis":
        return _analysis_parser()
    raise KeyError(f"unknown command {command!r} in a cli marker; known: sweep, measure, "
                   "analysis")


def _code(text: str) -> str:
    return "<code>" + html.escape(text) + "</code>"


def _shown(value) -> str:
    """A default as a user types it: a tuple or list as a comma list."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _option(parser: argparse.ArgumentParser, action: argparse.Action, slug: str) -> str:
    formatter = parser._get_formatter()
    invocation = formatter._format_action_invocation(action)
    help_text = formatter._expand_help(action) if action.help else ""
    help_text = " ".join(help_text.split())
    # An option without help shows nothing in --help; its default is still worth saying.
    if ("default" not in help_text and action.option_strings and action.nargs != 0
            and action.default not in (None, argparse.SUPPRESS)):
        help_text = (help_text + " " if help_text else "") + f"(default: {_shown(action.default)})"
    anchor = f"{slug}-{action.dest.replace('_', '-')}"
    return (f'<dt id="{anchor}">{_code(invocation)}</dt>\n'
            f"<dd>{html.escape(help_text) or '&nbsp;'}</dd>")


def render(command: str) -> str:
    """Markdown (with a definition list per group, in HTML) for one command's options."""
    parser = parser_for(command)
    out = ["```text", parser.format_usage().strip(), "```", ""]
    if parser.description:
        out += [parser.description, ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = {"positional arguments": "arguments", "options": "general options",
                 "optional arguments": "general options"}.get(group.title, group.title)
        out += [f"### {title}", ""]
        if group.description:
            out += [group.description, ""]
        out += ['<dl class="cli-options">']
        out += [_option(parser, a, command) for a in actions]
        out += ["</dl>", ""]
    return "\n".join(out)


def option_strings(command: str) -> list[str]:
    """Every option and positional name of ``command``'s parser (the test's checklist)."""
    names = []
    for action in parser_for(command)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names += list(action.option_strings) or [action.metavar or action.dest]
    return names


def on_config(config, **kwargs):
    root = str(Path(config["config_file_path"]).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
