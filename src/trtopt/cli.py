"""The command line: argument parsing -> library calls -> exit codes; nothing else."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

import trtopt

from .errors import EXIT_INTERNAL, EXIT_USER, TrtoptError
from .model import save_model
from .report import summary


def _progress(message: str) -> None:
    """Progress goes to a terminal only; CI logs (no TTY) stay quiet."""
    if sys.stderr.isatty():
        print(f"  ... {message}", file=sys.stderr, flush=True)


def cmd_compile(args: argparse.Namespace) -> int:
    result = trtopt.compile(
        args.recipe, output_dir=args.output, overrides=args.set, progress=_progress
    )
    print(summary(result.report))
    return result.exit_code


def cmd_optimize(args: argparse.Namespace) -> int:
    passes = [p.strip() for p in args.passes.split(",") if p.strip()] if args.passes else None
    model = trtopt.optimize(args.input, passes=passes)
    out = Path(args.output)
    before = len(onnx.load(args.input, load_external_data=False).graph.node)
    staged = out.with_name(f".{out.name}.partial")
    files = save_model(model, staged, external_data=args.external_data or None)
    for file in files:  # move into place only once every file is written
        file.replace(out.parent / file.name.replace(staged.name, out.name, 1))
    print(f"{args.input}: {before} -> {len(model.graph.node)} nodes, wrote {out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    recipe = trtopt.load_recipe(args.recipe, overrides=args.set)
    if args.print:
        print(recipe.to_yaml(), end="")
    else:
        print(f"{args.recipe}: ok ({len(recipe.passes)} passes, backend {recipe.build.backend})")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    for name, cls in trtopt.available_passes().items():
        print(f"{name}\n    {cls.summary()}")
        for option, info in cls.Options.model_fields.items():
            default = info.get_default(call_default_factory=True)
            doc = _option_doc(cls.Options, option)
            print(f"    - {option} (default: {json.dumps(default, default=str)}){doc}")
    return 0


def _option_doc(options: type, name: str) -> str:
    """The docstring written under an option's declaration (pydantic keeps it as description)."""
    description = options.model_fields[name].description
    return f": {' '.join(description.split())}" if description else ""


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(trtopt.json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trtopt", description="A declarative model compiler for NVIDIA TensorRT deployment."
    )
    parser.add_argument("--version", action="version", version=f"trtopt {trtopt.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    overrides = {
        "action": "append",
        "default": [],
        "metavar": "KEY=VALUE",
        "help": "override a recipe key, e.g. check.samples=8 (repeatable)",
    }
    sub = verb("compile", cmd_compile, "Run a recipe: passes, build, accuracy check, report.")
    sub.add_argument("recipe")
    sub.add_argument("-o", "--output", help="output folder (default: the recipe's `output`)")
    sub.add_argument("--set", **overrides)

    sub = verb("optimize", cmd_optimize, "Run graph passes on a model, no recipe needed.")
    sub.add_argument("input")
    sub.add_argument("output")
    sub.add_argument("--passes", help="comma-separated pass names (default: the default chain)")
    sub.add_argument(
        "--external-data",
        action="store_true",
        help="save weights to OUTPUT.data (automatic above 1 GiB)",
    )

    sub = verb("validate", cmd_validate, "Check a recipe against the schema.")
    sub.add_argument("recipe")
    sub.add_argument("--print", action="store_true", help="print the fully resolved recipe")
    sub.add_argument("--set", **overrides)

    verb("passes", cmd_passes, "List every registered pass with its options.")
    verb("schema", cmd_schema, "Print the JSON Schema of the recipe format.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrtoptError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # e.g. `trtopt schema | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an unexpected library failure: exit 3
        if args.debug:
            traceback.print_exc()
        print(
            f"internal error: {type(error).__name__}: {error} (run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


__all__ = ["EXIT_USER", "build_parser", "main"]
