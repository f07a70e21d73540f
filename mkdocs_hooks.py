"""Build-time pages for the documentation site (``hooks:`` in mkdocs.yml).

- ``reference/program-format.md`` from the JSON Schema (``stepbridge schema``), so the reference
  cannot drift from the pydantic models that validate program files;
- ``reference/cli.md`` from the typer commands (every command's help, arguments and options);
- optional pages other parts of the project write (``ray.md``, ``evaluations.md``,
  ``dspy-import.md``) join the navigation when they exist;
- :class:`SphinxRoles`, a griffe extension (mkdocs.yml ``extensions``): the docstrings cross-reference
  in Sphinx style (``:class:`RunResult```), which the API reference turns into links.

Links from a page to a file outside ``docs/`` (``../examples/rag_qa.yaml``) become code text: the
site holds the documentation, not the repository, and nothing may link out of it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import griffe
from mkdocs.structure.files import File, Files

OPTIONAL_PAGES = {  # nav section -> pages that join it when present
    "Backends": [("Ray", "ray.md")],
    "DSPy": [("Import a DSPy program", "dspy-import.md")],
    "Evaluations and optimizations": [("Evaluations and optimizations", "evaluations.md")],
}

ROOT = Path(__file__).resolve().parent
#: The package as it is imported (pyproject's package-dir maps stepbridge -> core/, stepbridge.storage ->
#: storage/, ...), laid out as symlinks for the API reference's static module finder (mkdocs.yml `paths`).
API_SOURCE = ROOT / "build" / "api-src"
_SUBPACKAGES = {"adapters": "adapters", "bridge": "bridge", "storage": "storage", "conformance": "conformance_tests"}


def _lay_out_package() -> None:
    package = API_SOURCE / "stepbridge"
    package.mkdir(parents=True, exist_ok=True)
    wanted = {entry.name: entry for entry in (ROOT / "core").iterdir() if entry.name != "__pycache__"}
    wanted.update({name: ROOT / folder for name, folder in _SUBPACKAGES.items()})
    for name, target in wanted.items():
        link = package / name
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


_lay_out_package()

_OUTSIDE_LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)\s]+)\)")


def on_config(config: Any) -> Any:
    docs = Path(config["docs_dir"])
    nav = config["nav"]
    for section, pages in OPTIONAL_PAGES.items():
        present = [{title: page} for title, page in pages if (docs / page).is_file()]
        if not present:
            continue
        for entry in nav:
            if isinstance(entry, dict) and section in entry:
                value = entry[section]
                entry[section] = (value if isinstance(value, list) else [value]) + present
                break
        else:  # a section of its own, before the adapter guide
            at = next((i for i, e in enumerate(nav) if isinstance(e, dict) and "Writing and certifying an adapter"
                       in e), len(nav) - 1)
            nav.insert(at, {section: present if len(present) > 1 else present[0][next(iter(present[0]))]})
    return config


def on_files(files: Files, config: Any) -> Files:
    for path, content in (("reference/program-format.md", program_format_page()), ("reference/cli.md", cli_page())):
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    return _OUTSIDE_LINK.sub(lambda m: f"{m.group(1)} (`{m.group(2).lstrip('./')}`)" if m.group(1).strip("`")
                             != m.group(2).lstrip("./") else f"`{m.group(2).lstrip('./')}`", markdown)


# ------------------------------------------------------------------------------------------------
# Sphinx roles in docstrings -> links in the API reference
# ------------------------------------------------------------------------------------------------
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj|const):`([^`]+)`")


class SphinxRoles(griffe.Extension):
    """``:class:`RunResult``` -> a link to where the reference documents it, resolved in the docstring's own
    scope (an optional autoref: a name the reference does not document stays code text, with no warning)."""

    def on_package(self, *, pkg: griffe.Module, **_: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(lambda m: _link(obj, m.group(1)), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]


def _link(obj: griffe.Object, target: str) -> str:
    target = target.lstrip("~")
    shown = target.rsplit(".", 1)[-1] if target.startswith(("stepbridge.", ".")) else target
    head, _, rest = target.lstrip(".").partition(".")
    try:
        path = target if target.startswith("stepbridge.") else obj.resolve(head) + (f".{rest}" if rest else "")
    except (griffe.NameResolutionError, ValueError):
        return f"`{shown}`"
    return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'


# ------------------------------------------------------------------------------------------------
# the program format, from the JSON Schema
# ------------------------------------------------------------------------------------------------
def program_format_page() -> str:
    from stepbridge.program import Program

    schema = Program.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.get("$defs", {})
    lines = ["# Program format reference", "",
             "Generated at build time from the JSON Schema that `stepbridge schema` prints (the pydantic models "
             "that validate every program file). The guides explain how the parts fit together: "
             "[writing programs](../programs.md) and [format 2](../format-2.md).", ""]
    lines += _object_section("Program (the file)", schema, defs)
    for name in sorted(defs):
        lines += _object_section(name, defs[name], defs)
    return "\n".join(lines) + "\n"


def _anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _type(spec: Any, defs: dict[str, Any]) -> str:
    if not isinstance(spec, dict):
        return "any"
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf"):
        if key in spec:
            return " or ".join(dict.fromkeys(_type(s, defs) for s in spec[key]))
    if "allOf" in spec and len(spec["allOf"]) == 1:
        return _type(spec["allOf"][0], defs)
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "enum" in spec:
        return " or ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    kind = spec.get("type")
    if kind == "array":
        return f"list of {_type(spec.get('items', {}), defs)}"
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return f"map of {_type(spec['additionalProperties'], defs)}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return str(kind or "any")


def _limits(spec: dict[str, Any]) -> str:
    names = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<",
             "minLength": "length ≥", "maxLength": "length ≤", "minItems": "items ≥", "maxItems": "items ≤",
             "pattern": "matches"}
    found = [f"{label} `{spec[key]}`" for key, label in names.items() if key in spec]
    for sub in spec.get("anyOf", []):
        if isinstance(sub, dict):
            found += [f"{label} `{sub[key]}`" for key, label in names.items() if key in sub]
    return ", ".join(dict.fromkeys(found))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _object_section(title: str, spec: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", ""]
    if spec.get("description"):
        lines += [" ".join(spec["description"].split()), ""]
    props: dict[str, Any] = spec.get("properties", {})
    if not props:
        kind = _type({k: v for k, v in spec.items() if k not in ("title", "description")}, defs)
        return [*lines, f"Type: {kind}", ""]
    required = set(spec.get("required", []))
    lines += ["| field | type | required | default | limits | description |", "|---|---|---|---|---|---|"]
    for name, prop in props.items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        lines.append(f"| `{name}` | {_cell(_type(prop, defs))} | {'yes' if name in required else ''} | "
                     f"{_cell(default)} | {_cell(_limits(prop))} | {_cell(prop.get('description', ''))} |")
    if spec.get("additionalProperties") is False:
        lines += ["", "No other keys are accepted."]
    return [*lines, ""]


# ------------------------------------------------------------------------------------------------
# the command line, from the typer commands
# ------------------------------------------------------------------------------------------------
def cli_page() -> str:
    from stepbridge.cli import command

    lines = ["# Command-line reference", "",
             "Generated at build time from the commands themselves (the same text as `--help`).", "",
             "Exit codes: 0 ok, 1 a run failed, 2 invalid program, input or configuration (nothing ran), "
             "130 interrupted (Ctrl-C), 143 terminated (SIGTERM).", ""]
    _command(command(), ["stepbridge"], lines)
    return "\n".join(lines) + "\n"


def _command(cmd: Any, path: list[str], lines: list[str]) -> None:
    subs = getattr(cmd, "commands", None)
    if len(path) > 1:
        lines += [f"{'#' * min(len(path), 4)} `{' '.join(path)}`", ""]
        if cmd.help:
            lines += [_clean_help(cmd.help), ""]
        usage = " ".join([*path, *(("[OPTIONS]",) if any(p.param_type_name == "option" for p in cmd.params)
                                   else ()), *(p.metavar or p.name.upper() for p in cmd.params
                                               if p.param_type_name == "argument"),
                          *(("COMMAND",) if subs else ())])
        lines += ["```text", usage, "```", ""]
        rows = []
        for p in cmd.params:
            if getattr(p, "hidden", False):
                continue
            names = ", ".join(f"`{o}`" for o in [*p.opts, *getattr(p, "secondary_opts", [])])
            if p.param_type_name == "argument":
                names = f"`{p.metavar or p.name.upper()}`"
            value = "" if getattr(p, "is_flag", False) or p.param_type_name == "argument" else (p.metavar or "")
            default = p.default if p.default not in (None, False, [], ()) and not callable(p.default) else ""
            rows.append(f"| {names} | {_cell(value)} | {_cell(str(default))} | {_cell(getattr(p, 'help', '') or '')} |")
        if rows:
            lines += ["| argument or option | value | default | help |", "|---|---|---|---|", *rows, ""]
    for name, sub in (subs or {}).items():
        if not getattr(sub, "hidden", False):
            _command(sub, [*path, name], lines)


def _clean_help(text: str) -> str:
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))
