"""The command line: argument parsing -> library calls -> exit codes; nothing else.

It imports only what parsing needs: the library (``trtopt``'s names load when first used) and
heavy packages come in with the verb that uses them, so ``trtopt --help`` starts at once."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import tempfile
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import trtopt

from . import interrupt, jsontext, progress
from ._version import __version__
from .diff import DEFAULT_ATOL, DEFAULT_MARGIN
from .errors import EXIT_INTERNAL, EXIT_USER, TrtoptError, did_you_mean
from .staging import owner, remove_dead


def _progress(message: str) -> None:
    """Steps go to a terminal only (long work inside a step shows its own progress, in CI
    logs too); --quiet silences both."""
    if sys.stderr.isatty() and not progress.is_quiet():
        print(f"  ... {message}", file=sys.stderr, flush=True)


def cmd_compile(args: argparse.Namespace) -> int:
    if args.strict:  # the same as the recipe's own key, for every recipe named
        args.set = [*(args.set or []), "strict=true"]
    cache = {"cache_dir": args.cache_dir, "use_cache": not args.no_cache}
    if args.ray is not None:
        if args.force:
            raise trtopt.UserError("--force is not supported with --ray", "--force")
        return _compile_on_ray(args, cache)
    cache["force"] = args.force
    if len(args.recipe) == 1:
        result = trtopt.compile(
            args.recipe[0], output_dir=args.output, overrides=args.set, progress=_progress, **cache
        )
        print(result.summary())
        return result.exit_code
    results = trtopt.compile_many(
        args.recipe,
        jobs=args.jobs if args.jobs is not None else 1,
        output_dir=args.output,
        overrides=args.set,
        progress=lambda done: _progress(f"{done.recipe}: {done.verdict}"),
        **cache,
    )
    print(trtopt.summary_table(results))
    return trtopt.worst_exit_code(results)


def _compile_on_ray(args: argparse.Namespace, cache: dict) -> int:
    if args.jobs is not None:
        raise trtopt.UserError(
            "--jobs sets local processes; with --ray the cluster's resources decide how many "
            "recipes run at once: drop one of them",
            "--jobs",
        )
    overrides, output = list(args.set), args.output
    if len(args.recipe) == 1 and output is not None:
        # One recipe: -o names its folder, as without --ray (a batch puts each in -o/<name>).
        overrides.append(f"output={json.dumps(output)}")
        output = None
    results = trtopt.compile_on_ray(
        args.recipe,
        args.ray,
        output_dir=output,
        overrides=overrides,
        progress=lambda done: _progress(f"{done.recipe}: {done.verdict}"),
        **cache,
    )
    print(trtopt.summary_table(results))
    return trtopt.worst_exit_code(results)


def cmd_cache(args: argparse.Namespace) -> int:
    if args.action == "info":
        info = trtopt.cache_info(args.cache_dir)
        if args.json:
            print(jsontext.dumps(info.to_json(), indent=2))
        else:
            kinds = ", ".join(f"{n} {kind}" for kind, n in info.by_kind.items()) or "empty"
            print(f"{info.root}: {info.entries} entries ({kinds}), {_size(info.bytes)}")
            print(f"  other files: {_size(info.other_bytes)}")
            print(f"  leftovers of interrupted writes: {info.leftovers}")
        return 0
    max_size = _byte_size(args.max_size) if args.max_size is not None else None
    result = trtopt.prune_cache(args.cache_dir, max_size)
    reasons = "".join(f", {n} {why}" for why, n in result.reasons.items())
    print(
        f"removed {result.removed} entries ({_size(result.freed)}{reasons}) and "
        f"{result.leftovers} leftovers; kept {result.kept} ({_size(result.kept_bytes)})"
    )
    return 0


def _byte_size(text: str) -> int:
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        return int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError:
        raise trtopt.UserError(f"not a size such as 10GiB: '{text}'", "--max-size") from None


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


def cmd_optimize(args: argparse.Namespace) -> int:
    passes = [p.strip() for p in args.passes.split(",") if p.strip()] if args.passes else None
    known = trtopt.available_passes()
    for name in [] if args.plugin else passes or []:  # a plugin's names are known once loaded
        if name not in known:
            hint = did_you_mean(name, known)
            raise trtopt.UserError(f"unknown pass '{name}'{hint}", f"--passes {args.passes}")
    out = Path(args.output)
    if out.is_dir():
        raise trtopt.UserError("is a folder: give the optimized model's file name", str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under the final names (a data file's name is recorded in the model) in a
    # folder beside the output, then moved into place only once every file is complete. The
    # folder is named with its owner: the next optimize removes those of killed processes.
    remove_dead(out.parent, r"\..+\.optimize-")
    prefix = f".{out.name}.optimize-{owner()}"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=prefix) as staging:
        staged = Path(staging) / out.name
        files = trtopt.optimize_file(
            args.input,
            staged,
            passes=passes,
            external_data=args.external_data or None,
            verify=not args.no_verify,
            data=args.data,
            strict=args.strict,
            plugins=args.plugin or (),
            on_rollback=lambda r: print(
                f"{args.input}: pass '{r.pass_name}' rolled back: {r.reason}", file=sys.stderr
            ),
        )
        after = len(trtopt.load_model(staged, external_data=False).graph.node)
        for file in files:
            file.replace(out.parent / file.name)
    before = len(trtopt.load_model(args.input, external_data=False).graph.node)
    print(f"{args.input}: {before} -> {after} nodes, wrote {out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    # Checking a recipe must not run its code: plugins are parsed, not imported.
    recipe = trtopt.load_recipe(args.recipe, overrides=args.set, run_plugins=False)
    if not Path(recipe.model).is_file():
        raise trtopt.ModelError(f"model file not found: {recipe.model}", recipe.place("model"))
    if args.print:
        print(recipe.to_yaml(), end="")
    else:
        print(f"{args.recipe}: ok ({len(recipe.passes)} passes, backend {recipe.build.backend})")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    for name, cls in trtopt.available_passes().items():
        print(f"{name}\n    {cls.summary()}")
        for line in _option_lines(cls.Options, "    "):
            print(line)
    return 0


def _option_lines(options: type, indent: str) -> list[str]:
    """Each option with its default as written in a recipe and its doc; the options of a
    nested section (e.g. precision's keep_fp32) indented under it."""
    from .recipe import model_in  # with the verb: the recipe schema loads pydantic

    lines = []
    for option, info in options.model_fields.items():
        default = info.get_default(call_default_factory=True)
        doc = _option_doc(options, option)
        section = model_in(info.annotation)
        if section is not None and default is not None:  # its keys' defaults follow
            lines.append(f"{indent}- {option}{doc or ': a section with the keys below'}")
        else:
            value = _yaml_value(default, info.annotation)
            lines.append(f"{indent}- {option} (default: {value}){doc}")
        if section is not None:
            lines += _option_lines(section, indent + "    ")
    return lines


def _yaml_value(value: object, annotation: object) -> str:
    """A default as a recipe writes it: YAML flow style, sizes in binary units (16MiB)."""
    import yaml
    from pydantic import BaseModel, ByteSize

    if isinstance(value, int) and _mentions(annotation, ByteSize) and not isinstance(value, bool):
        for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
            if value and value % (1 << shift) == 0:
                return f"{value >> shift}{unit}"
        return str(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _mentions(annotation: object, kind: type) -> bool:
    """Whether ``kind`` appears in an annotation such as `X | None` or `list[X]`."""
    if annotation is kind:
        return True
    return any(_mentions(arg, kind) for arg in typing.get_args(annotation))


def _option_doc(options: type, name: str) -> str:
    """The option's description: the docstring written under its declaration, else its
    section's docstring, else a Literal option's choices."""
    from .docstrings import field_doc
    from .recipe import model_in  # with the verb: the recipe schema loads pydantic

    info = options.model_fields[name]
    description = info.description or field_doc(options, name)
    section = model_in(info.annotation)
    if not description and section is not None and section.__doc__:
        description = section.__doc__.strip().splitlines()[0]
    if not description and typing.get_origin(info.annotation) is typing.Literal:
        description = "one of " + " | ".join(str(c) for c in typing.get_args(info.annotation))
    return f": {' '.join(description.split())}" if description else ""


def cmd_golden(args: argparse.Namespace) -> int:
    golden = trtopt.update_golden(
        args.recipe, path=args.output, overrides=args.set, samples=args.samples
    )
    size = golden.path.stat().st_size
    print(
        f"wrote {golden.path} ({size / 1024:.1f} KiB: {len(golden.inputs)} samples, outputs "
        f"{', '.join(golden.output_names)}) and {golden.path.with_suffix('.json').name}"
    )
    if size > trtopt.GOLDEN_SIZE_BUDGET:
        print(
            f"warning: over the {trtopt.GOLDEN_SIZE_BUDGET >> 10} KiB golden-file budget; "
            "lower check.golden_samples or the check's dims",
            file=sys.stderr,
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    result = trtopt.check(
        args.recipe,
        artifact=args.artifact,
        golden=args.golden,
        baseline=args.baseline,
        overrides=args.set,
    )
    data = result.to_json()
    if args.junit:
        trtopt.write_junit(data, args.junit)
    if args.html:
        pairs = trtopt.output_pairs(result.reference_outputs, result.candidate_outputs)
        trtopt.write_html(data, args.html, pairs)
    print(jsontext.dumps(data, indent=2) if args.json else trtopt.format_check(result))
    return result.exit_code


def cmd_monitor(args: argparse.Namespace) -> int:
    result = trtopt.monitor(args.recipe, args.data, artifact=args.artifact, overrides=args.set)
    if args.junit:
        result.write_junit(args.junit)
    if args.html:
        result.write_html(args.html)
    print(jsontext.dumps(result.to_json(), indent=2) if args.json else result.format())
    return result.exit_code


def cmd_diff(args: argparse.Namespace) -> int:
    result = trtopt.diff_reports(
        args.report_a,
        args.report_b,
        margin=args.margin,
        atol=args.atol,
        latency_margin=args.latency_margin,
        size_margin=args.size_margin,
    )
    print(jsontext.dumps(result.to_json(), indent=2) if args.json else result.format())
    return result.exit_code


def cmd_deploy(args: argparse.Namespace) -> int:
    entry = trtopt.deploy_to_triton(
        args.recipe, repository=args.triton, output_dir=args.artifact, overrides=args.set
    )
    print(f"wrote {entry.version_dir} and {entry.config_path}")
    for note in entry.config.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    report = trtopt.lint_model(
        args.model,
        args.target,
        parse=not args.no_parse,
        compute_capabilities=args.compute_capability,
    )
    print(jsontext.dumps(report.to_json(), indent=2) if args.json else report.format())
    if args.strict and report.errors:
        raise trtopt.LintError(report.summary(), args.model)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(trtopt.json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trtopt", description="A declarative model compiler for NVIDIA TensorRT deployment."
    )
    parser.add_argument("--version", action="version", version=f"trtopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    # Also after the verb (`trtopt compile X --debug`), where errors tell users to add it;
    # SUPPRESS keeps the verb's parser from resetting a --debug given before the verb.
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress lines or bars (on stderr)"
    )
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors"
    )
    debug.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress lines or bars (on stderr)",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help, description=help, parents=[debug])
        sub.set_defaults(func=func)
        return sub

    overrides = {
        "action": "append",
        "default": [],
        "metavar": "KEY=VALUE",
        "help": "override a recipe key, e.g. check.samples=8 (repeatable)",
    }
    cache_dir = {
        "metavar": "DIR",
        "help": "stage cache folder (default: $TRTOPT_CACHE_DIR, the recipe's cache.dir, "
        "the platform's user cache folder)",
    }
    sub = verb("compile", cmd_compile, "Run recipes: passes, build, accuracy check, report.")
    sub.add_argument("recipe", nargs="+", help="one or more recipe files")
    sub.add_argument(
        "-o",
        "--output",
        help="output folder (default: the recipe's `output`); with several recipes, "
        "each goes to OUTPUT/<name>",
    )
    sub.add_argument("--set", **overrides)
    sub.add_argument(
        "-j", "--jobs", type=int, help="recipes compiled at once (local processes; default 1)"
    )
    sub.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run each recipe as a task on the Ray cluster at ADDRESS (the head's HOST:PORT, "
        "or auto); needs pip install 'trtopt[ray]'",
    )
    sub.add_argument("--cache-dir", **cache_dir)
    sub.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    sub.add_argument(
        "--force",
        action="store_true",
        help="replace an output folder that exists, is not empty and was not written by "
        "trtopt (never a file, a symlink, or a folder holding the compile's inputs)",
    )
    sub.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a pass had to be rolled back (as `strict: true` in the recipe)",
    )

    sub = verb("optimize", cmd_optimize, "Run graph passes on a model, no recipe needed.")
    sub.add_argument("input")
    sub.add_argument("output")
    sub.add_argument("--passes", help="comma-separated pass names (default: the default chain)")
    sub.add_argument(
        "--external-data",
        action="store_true",
        help="save weights to OUTPUT.data (automatic above 1 GiB)",
    )
    sub.add_argument(
        "--data",
        metavar="FILE.npz",
        help="inputs (arrays by input name) each pass's result is proven on (default: "
        "synthetic inputs at the model's declared shapes)",
    )
    sub.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 and write nothing when a pass had to be rolled back",
    )
    sub.add_argument(
        "--plugin",
        action="append",
        metavar="FILE.py",
        help="a file whose passes --passes may name (repeatable)",
    )
    sub.add_argument(
        "--no-verify",
        action="store_true",
        help="run the passes without proving each result on ONNX Runtime (no rollback)",
    )

    sub = verb("validate", cmd_validate, "Check a recipe against the schema.")
    sub.add_argument("recipe")
    sub.add_argument("--print", action="store_true", help="print the fully resolved recipe")
    sub.add_argument("--set", **overrides)

    sub = verb("lint", cmd_lint, "Check a model against a TensorRT target, on a CPU.")
    sub.add_argument("model")
    sub.add_argument(
        "--target", default="tensorrt-10", choices=["tensorrt-10", "tensorrt-11", "tensorrt-rtx"]
    )
    sub.add_argument("--strict", action="store_true", help="exit 2 on any error-level finding")
    sub.add_argument("--json", action="store_true", help="print the findings as JSON")
    sub.add_argument(
        "--no-parse", action="store_true", help="skip the real TensorRT for RTX parser"
    )
    sub.add_argument(
        "--compute-capability",
        action="append",
        metavar="X.Y",
        help="a GPU the engine is for, e.g. 8.9 (repeatable): FP8 below 8.9 is an error",
    )

    sub = verb("cache", cmd_cache, "Show or prune the stage cache.")
    sub.add_argument("action", choices=["info", "prune"])
    sub.add_argument("--cache-dir", **cache_dir)
    sub.add_argument(
        "--max-size", metavar="SIZE", help="prune: also evict least recently used entries to fit"
    )
    sub.add_argument("--json", action="store_true", help="info: print JSON")

    sub = verb("golden", cmd_golden, "Write a recipe's golden file (update).")
    sub.add_argument("action", choices=["update"])
    sub.add_argument("recipe")
    sub.add_argument(
        "-o", "--output", help="golden .npz (default: check.golden, else golden/NAME.npz)"
    )
    sub.add_argument(
        "--samples",
        type=_positive_int,
        help="feeds to store (default: check.golden_samples or samples)",
    )
    sub.add_argument("--set", **overrides)

    sub = verb("check", cmd_check, "Run an artifact on golden inputs and apply the thresholds.")
    sub.add_argument("recipe", nargs="?", help="the recipe (thresholds, golden file, artifact)")
    sub.add_argument("--artifact", help="artifact file or output folder (default: the recipe's)")
    sub.add_argument("--golden", help="golden .npz (default: the recipe's check.golden)")
    sub.add_argument("--baseline", help="report for max_degradation (default: check.baseline)")
    sub.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    sub.add_argument("--html", metavar="FILE", help="also write an HTML report")
    sub.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.add_argument("--set", **overrides)

    sub = verb(
        "monitor",
        cmd_monitor,
        "Run a compiled artifact and its reference on inputs captured in production; flag the "
        "samples beyond the thresholds.",
    )
    sub.add_argument("recipe", help="the recipe (thresholds, model, artifact)")
    sub.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="captured inputs: a folder of .npz files (arrays by input name, a sample or a "
        "batch each) or of images",
    )
    sub.add_argument("--artifact", help="artifact file or output folder (default: the recipe's)")
    sub.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    sub.add_argument("--html", metavar="FILE", help="also write an HTML page with the plots")
    sub.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.add_argument("--set", **overrides)

    sub = verb("deploy", cmd_deploy, "Write a compiled recipe into a Triton model repository.")
    sub.add_argument("recipe")
    sub.add_argument(
        "--triton",
        metavar="REPO",
        help="the model repository (default: the recipe's deploy.triton.repository)",
    )
    sub.add_argument(
        "--artifact", metavar="DIR", help="the compile's output folder (default: the recipe's)"
    )
    sub.add_argument("--set", **overrides)

    sub = verb("diff", cmd_diff, "Show what changed between two reports; exit 1 on regression.")
    sub.add_argument("report_a", metavar="REPORT_A")
    sub.add_argument("report_b", metavar="REPORT_B")
    sub.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="relative worsening of an accuracy metric that counts as a regression (0.1)",
    )
    sub.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help="absolute worsening below which nothing counts (1e-5)",
    )
    sub.add_argument("--latency-margin", type=float, help="gate the artifact's median latency")
    sub.add_argument("--size-margin", type=float, help="gate the artifact's size")
    sub.add_argument("--json", action="store_true", help="print the changes as JSON")

    verb("passes", cmd_passes, "List every registered pass with its options.")
    verb("schema", cmd_schema, "Print the JSON Schema of the recipe format.")
    return parser


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


_ENVIRONMENT_ERRNOS = {
    *(errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT),
    *(errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG),
}
"""OSErrors that the user's files or machine cause (permissions, a read-only or full disk, a
folder where a file should be): exit 2 naming the path, not an internal error."""


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM ends the process through the same cleanup as an error: staging and scratch
    # folders removed, the previous output and the cache untouched.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress.set_quiet(args.quiet)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminated)
    try:
        interrupt.startup_done()  # from here Ctrl-C is KeyboardInterrupt, handled below
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
        return interrupt.EXIT_INTERRUPTED
    except OSError as error:
        # A folder that cannot be written, a full disk: the user's to fix, named by its path.
        if error.errno not in _ENVIRONMENT_ERRNOS:
            return _internal(args, error)
        if args.debug:
            traceback.print_exc()
        where = f"{error.filename}: " if error.filename is not None else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USER
    except Exception as error:
        return _internal(args, error)


def program() -> None:
    """The trtopt program (the console script, ``python -m trtopt``): :func:`main`, then exit
    with its code. After Ctrl-C it exits at once with 130: CPython ends a process that a
    KeyboardInterrupt passed through an ``eval`` of a string (pydantic evaluates annotations
    so) by killing it with SIGINT at exit (-2), even when the interrupt was caught."""
    code = main()
    if code == interrupt.EXIT_INTERRUPTED:
        if (logging := sys.modules.get("logging")) is not None:  # flushed only if it was used
            logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def _internal(args: argparse.Namespace, error: Exception) -> int:
    """A bug or an unexpected library failure: exit 3 (called while handling ``error``)."""
    if args.debug:
        traceback.print_exc()
    print(
        f"internal error: {type(error).__name__}: {error} (run with --debug for details)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


__all__ = ["EXIT_USER", "build_parser", "main", "program"]
