"""The ``fulcra`` command line.

    fulcra plugins [--kind K] [--json]        what is installed, what is missing and why
    fulcra plugins show KIND NAME             parameters, defaults and docs of one plugin
    fulcra run RECIPE_OR_CONFIG [k=v ...]     run a workflow (resumes from out=DIR)
    fulcra config show RECIPE_OR_CONFIG [k=v ...]   the resolved, validated config
    fulcra run RECIPE --help                  the recipe's keys: types, values, help
    fulcra recipes [--json]                   the runnable recipes
    fulcra demo [out=DIR] [--only a,b]        every workflow on embedded data, with a report
    fulcra NAME ...                           a plugin's command (kind ``commands``: ``fulcra plugins --kind commands``)

Bad input exits with status 2 and one line on stderr; --debug (or FULCRA_DEBUG=1) shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line.rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_plugins(args: argparse.Namespace) -> int:
    from . import registry

    if args.action == "show":
        return cmd_plugins_show(args)
    rows = registry.status(args.kind)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [
        [
            r["kind"],
            r["name"],
            r["distribution"] or "-",
            "yes" if r["available"] else "no",
            r["summary"] if r["available"] else r["reason"],
        ]
        for r in rows
    ]
    _print_table(table, ["kind", "name", "distribution", "available", "summary / reason"])
    return 0


def cmd_plugins_show(args: argparse.Namespace) -> int:
    from . import config, registry

    if not args.kind or not args.name:
        raise SystemExit("usage: fulcra plugins show KIND NAME")
    kind = registry.resolve_kind(args.kind)
    preset = registry.preset(kind, args.name)
    if preset is not None and args.name not in registry.discover()[kind]:
        return _show_preset(kind, args.name, preset)
    obj = registry.load_plugin(kind, args.name)
    spec = next((s for s in registry.plugin_specs(kind) if s.name == args.name), None)
    print(f"{kind}/{args.name}  ({getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', '')})")
    if spec is not None:
        print(f"distribution: {spec.distribution or '-'}   extra: {spec.extra or '-'}")
    doc = registry.describe(obj)
    if doc:
        print()
        print(doc)
    params = config.plugin_params(obj)
    if params:
        print("\nparameters:")
        for p in params:
            default = "(required)" if p.required else repr(p.default)
            kind_note = f" [{p.kind}]" if p.kind else ""
            print(f"  {p.name}: {p.type_name}{kind_note} = {default}")
            if p.help:
                print(f"      {p.help}")
    presets = registry.catalogue()["presets"].get(kind) or {}
    mine = [k for k, v in presets.items() if isinstance(v, dict) and v.get("name") == args.name]
    if mine:
        print(f"\npresets: {', '.join(mine)}")
    return 0


def _show_preset(kind: str, name: str, preset) -> int:
    """A preset: the plugin it configures and the values it sets (overridable as usual)."""
    from .config import to_yaml

    values = dict(preset)
    print(
        f"{kind}/{name}: preset of {kind} plugin {values.get('name')!r} (registry.yaml); "
        f"use it as {kind.rstrip('s')}={name} and override any key"
    )
    print(to_yaml(values), end="")
    return 0


def _recipe_help(source: str) -> int:
    """``fulcra run SOURCE --help``: the recipe's description and every key with type, value and help."""
    from omegaconf import OmegaConf

    from . import config, registry
    from .runner import prepare

    name, cfg, common = prepare(source, [])
    recipe = registry.catalogue()["recipes"].get(source) or {}
    print(f"fulcra run {source} [key=value ...]   (workflow {name!r})")
    if recipe.get("description"):
        print(f"  {recipe['description']}")
    values = OmegaConf.to_container(cfg, resolve=True)
    print("\nkeys (value in this recipe):")
    print("  out: path = runs/<recipe>   output folder; a rerun reuses what is unchanged")
    print(
        f"  seed: int = {common.get('seed', 0)}   device: str = {common.get('device', 'auto')}   hooks: list = {list(common.get('hooks', ['progress', 'jsonl']))}"
    )
    for p in config.plugin_params(registry.load_plugin("workflows", name)):
        v = values.get(p.name, p.default)
        node = {"name": v} if p.kind and isinstance(v, str) else v
        if p.kind and isinstance(node, dict) and "name" in node:
            print(
                f"  {p.name}: {p.kind} plugin = {node['name']}   ({p.help})"
                if p.help
                else f"  {p.name}: {p.kind} plugin = {node['name']}"
            )
            try:
                sub = config.plugin_params(registry.load_plugin(p.kind, str(node["name"])))
            except Exception as exc:  # a plugin that cannot load here: say why, keep listing
                print(f"      ({str(exc).splitlines()[0]})")
                continue
            for q in sub:
                val = node.get(q.name, "(required)" if q.required else q.default)
                text = json.dumps(val) if not isinstance(val, str) else val
                print(f"    {p.name}.{q.name}: {q.type_name} = {text}" + (f"   {q.help}" if q.help else ""))
            continue
        text = json.dumps(v) if not isinstance(v, str) else v
        print(f"  {p.name}: {p.type_name} = {text}" + (f"   {p.help}" if p.help else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run

    results = run(args.source, args.overrides)
    if not isinstance(results, dict):
        return 0
    summary = results.get("summary") or results.get("table")
    if summary:
        print(str(summary).rstrip())
    else:  # the scalar results, rounded, one per line
        for k, v in results.items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                print(f"{k}: {_rounded(v)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from .config import to_yaml
    from .runner import prepare

    name, cfg, common = prepare(args.source, args.overrides)
    from . import registry
    from .interfaces import CheckedWorkflow

    workflow = registry.load_plugin("workflows", name)(cfg)
    if isinstance(workflow, CheckedWorkflow) and not args.no_check:
        workflow.check()  # the inputs too (files, cameras, ops), as `run` checks them before writing
    print(
        to_yaml(
            {
                "workflow": name,
                **{k: v for k, v in common.items() if k != "workflow"},
                **OmegaConf.to_container(cfg, resolve=True),
            }
        ),
        end="",
    )
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from .registry import catalogue

    recipes = catalogue()["recipes"]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "recipe": k,
                        "workflow": v.get("workflow"),
                        "description": v.get("description", ""),
                        "extends": v.get("extends"),
                    }
                    for k, v in sorted(recipes.items())
                ],
                indent=2,
            )
        )
        return 0
    _print_table(
        [[k, str(v.get("workflow", "?")), str(v.get("description", ""))] for k, v in sorted(recipes.items())],
        ["recipe", "workflow", "description"],
    )
    return 0


def _rounded(value):
    """Numbers as a person reads them: 4 significant digits (nested lists and dicts too)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _is_path(text: str, kind: str) -> bool:
    """Whether a result's string value names an existing file or folder; a long sentence (over the
    file system's name limit) or a string with a NUL is simply not one."""
    try:
        return Path(text).is_file() if kind == "file" else Path(text).is_dir()
    except (OSError, ValueError):
        return False


def _report_items(result: dict, out: Path) -> list[str]:
    """Markdown lines of a demo stage's result: rounded values, and images embedded (by paths
    relative to the report, so the folder can be moved)."""
    lines, images = [], []
    for k, v in result.items():
        if k == "summary":
            continue
        if isinstance(v, str) and _is_path(v, "file") and v.lower().endswith((".png", ".jpg")):
            images.append((k, Path(v)))
        elif isinstance(v, str) and _is_path(v, "dir") and any(Path(v).glob("*.png")):
            images.append((k, sorted(Path(v).glob("*.png"))[0]))
        lines.append(f"- `{k}`: {_rounded(v)}")
    for k, path in images:
        try:
            rel = os.path.relpath(path.resolve(), out.resolve())
        except ValueError:  # another drive
            rel = str(path)
        lines += ["", f"![{k}]({rel})"]
    return lines


def cmd_demo(args: argparse.Namespace) -> int:
    """Run every demo stage listed in registry.yaml (``demo:``) and write OUT/report.md."""
    import difflib

    from .errors import ConfigError, MissingDependencyError
    from .registry import catalogue

    out = Path(args.out)
    for item in args.overrides:
        key, eq, value = item.partition("=")
        if key != "out" or not eq or not value:
            raise ConfigError(f"demo: unknown argument {item!r} (demo takes out=DIR and --only a,b)")
        out = Path(value).expanduser()
    stages = catalogue().get("demo") or []
    if args.only:
        names = [s["stage"] for s in stages]
        wanted = [w for w in args.only.split(",") if w]
        for w in wanted:
            if w not in names:
                close = difflib.get_close_matches(w, names, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise ConfigError(f"demo --only: unknown stage {w!r}{hint} (stages: {', '.join(names)})")
        stages = [s for s in stages if s["stage"] in wanted]
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# fulcra demo report", ""]
    failed = 0
    for stage in stages:
        name, ref = stage["stage"], stage["function"]
        print(f"[fulcra demo] stage {name} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        module, _, attr = ref.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
            result = fn(out / name) or {}
            status = "ok"
        except MissingDependencyError as exc:
            result, status = {"skipped": str(exc)}, "skipped"
        except Exception as exc:  # a failed stage is reported, the others still run
            if os.environ.get("FULCRA_DEBUG"):
                raise
            result, status = {"error": f"{type(exc).__name__}: {exc}"}, "FAILED"
            failed += 1
        dt = time.time() - t0
        lines += [f"## {name} — {status} ({dt:.0f} s)", "", stage.get("description", ""), ""]
        summary = result.get("summary") if isinstance(result, dict) else None
        if summary:
            lines += ["```", str(summary).rstrip(), "```", ""]
        lines += _report_items(result, out) + [""]
        print(f"[fulcra demo] stage {name}: {status} in {dt:.0f} s", file=sys.stderr, flush=True)
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"demo report: {out / 'report.md'}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fulcra", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"fulcra {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (same as FULCRA_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list plugins (or: plugins show KIND NAME)")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name_args", nargs="*", help="KIND NAME for `show`")
    p.add_argument("--kind", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plugins)

    p = sub.add_parser(
        "run",
        help="run a recipe or config file with key=value overrides",
        description="Run a recipe (see `fulcra recipes`) or a YAML config with key=value overrides; "
        "`fulcra run RECIPE --help` lists the recipe's keys.",
    )
    p.add_argument("source", help="a recipe name or a YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides (out=DIR, seed=N, a.b=c, ...)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("config", help="config show RECIPE_OR_CONFIG [key=value ...]")
    p.add_argument("action", choices=["show"])
    p.add_argument("--no-check", action="store_true", help="check the config only, not the input files")
    p.add_argument("source")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("recipes", help="list runnable recipes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_recipes)

    p = sub.add_parser("demo", help="run every workflow on embedded data")
    p.add_argument("overrides", nargs="*", help="out=DIR (default runs/demo)")
    p.add_argument("--out", default="runs/demo", help="same as out=DIR")
    p.add_argument("--only", default=None, help="comma-separated stages")
    p.set_defaults(fn=cmd_demo)

    # plugins' commands, listed without importing them (the module is loaded only when run)
    for name in sorted(_plugin_commands()):
        if name not in sub.choices:
            sub.add_parser(name, help=_plugin_commands()[name] or f"plugin command {name!r}", add_help=False)
    return parser


BUILTIN_COMMANDS = ("plugins", "run", "config", "recipes", "demo")


def _plugin_commands() -> dict[str, str]:
    """``{name: summary}`` of the installed ``fulcra.commands`` entry points."""
    from . import registry

    cat = registry.catalogue()["plugins"].get("commands") or {}
    return {
        name: (cat.get(name) or {}).get("summary", "")
        for name in registry.discover()["commands"]
        if name not in BUILTIN_COMMANDS
    }


def run_plugin_command(name: str, argv: Sequence[str]) -> int:
    """Load the ``commands`` plugin ``name``, parse ``argv`` with its arguments and run it."""
    from . import registry

    cls = registry.load_plugin("commands", name)
    command = cls()
    parser = argparse.ArgumentParser(prog=f"fulcra {name}", description=getattr(command, "help", None))
    command.add_arguments(parser)
    args = parser.parse_args(list(argv))
    return int(command.run(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import FulcraError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `fulcra run SOURCE --help`: the recipe's keys rather than argparse's usage line
    if len(argv) >= 3 and argv[0] == "run" and any(a in ("-h", "--help") for a in argv[2:]):
        argv_run = [a for a in argv[1:] if a not in ("-h", "--help")]
        try:
            return _recipe_help(argv_run[0])
        except FulcraError as exc:
            print(f"fulcra: error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
    lead = [a for a in argv if a not in ("--debug",)]
    if lead and lead[0] not in BUILTIN_COMMANDS and not lead[0].startswith("-") and lead[0] in _plugin_commands():
        if "--debug" in argv[: argv.index(lead[0])]:
            os.environ["FULCRA_DEBUG"] = "1"
        try:
            return run_plugin_command(lead[0], argv[argv.index(lead[0]) + 1 :])
        except FulcraError as exc:
            if os.environ.get("FULCRA_DEBUG"):
                raise
            print(f"fulcra: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["FULCRA_DEBUG"] = "1"
    if args.command == "plugins":
        names = list(args.name_args)
        if args.action == "show":
            if len(names) != 2:
                parser.error("plugins show takes KIND NAME")
            args.kind, args.name = names
        elif names:
            parser.error(f"unexpected arguments {names}")
    try:
        return args.fn(args) or 0
    except FulcraError as exc:
        if os.environ.get("FULCRA_DEBUG"):
            raise
        print(f"fulcra: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if os.environ.get("FULCRA_DEBUG"):
            raise
        print(f"fulcra: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fulcra: interrupted (run again with the same out= to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `fulcra plugins | head`: the reader left; stay quiet (and keep Python from complaining at exit)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("FULCRA_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(f"fulcra: error: {type(exc).__name__}: {msg} (FULCRA_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
