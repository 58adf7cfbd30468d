#!/usr/bin/env python3
"""Keep each role's README contract table in step with its argument specs.

Every role with meta/argument_specs.yml has, in README.md, one table between
`<!-- contract -->` and `<!-- /contract -->`: one `input` row per option of
every entry point (name, default, meaning, from the specs) and the role's
`output` rows (what it provides to other roles and to the hosts), which are
written by hand and kept as they are.

  python tools/checks/role_docs.py          rewrite the input rows
  python tools/checks/role_docs.py --check  exit 1 when a README is out of step
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
START, END = "<!-- contract -->", "<!-- /contract -->"
HEADER = ["| direction | name | default | meaning |", "|---|---|---|---|"]


def spec_options(role: Path) -> dict[str, dict]:
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    options: dict[str, dict] = {}
    for entry in specs["argument_specs"].values():
        for name, option in (entry.get("options") or {}).items():
            options.setdefault(name, option)
    return options


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads Ansible's !unsafe strings as plain strings."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def role_defaults(role: Path) -> dict:
    path = role / "defaults" / "main.yml"
    return (yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}) if path.is_file() else {}


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def default_of(name: str, option: dict, defaults: dict) -> str:
    if option.get("required"):
        return "required"
    if name in defaults:
        value = defaults[name]
    elif "default" in option:
        value = option["default"]
    else:
        return "none"
    if value is None:
        return "`null`"
    shown = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    shown = shown.removesuffix("...").strip()
    shown = cell(shown)
    return f"`{shown}`" if len(shown) <= 60 else "see defaults/main.yml"


def input_rows(role: Path) -> list[str]:
    defaults = role_defaults(role)
    return [f"| input | `{name}` | {default_of(name, option, defaults)} "
            f"| {cell(option.get('description', ''))} |" for name, option in spec_options(role).items()]


def render(role: Path, readme: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"{role.name}/README.md has no {START} ... {END} section")
    head, rest = readme.split(START, 1)
    table, tail = rest.split(END, 1)
    outputs = [line for line in table.splitlines() if line.startswith("| output |")]
    body = "\n".join([*HEADER, *input_rows(role), *outputs])
    return f"{head}{START}\n{body}\n{END}{tail}"


def roles() -> list[Path]:
    return sorted(p.parent.parent for p in (REPO / "roles").glob("*/meta/argument_specs.yml"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report READMEs out of step")
    args = parser.parse_args(argv)
    stale = []
    for role in roles():
        path = role / "README.md"
        current = path.read_text(encoding="utf-8")
        wanted = render(role, current)
        if wanted != current:
            stale.append(role.name)
            if not args.check:
                path.write_text(wanted, encoding="utf-8")
    if stale:
        verb = "out of step" if args.check else "rewritten"
        print(f"README contract tables {verb}: {', '.join(stale)}"
              + (" (run python tools/checks/role_docs.py)" if args.check else ""))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
