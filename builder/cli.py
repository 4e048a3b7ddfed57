"""The command line. The only module that prints; it turns errors into messages and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import tomli_w

from builder import __version__
from builder import log as azlog
from builder.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STDOUT_CLOSED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    AzbuildError,
    TemplateError,
    Terminated,
    UsageError,
)
from builder.redact import redact
from builder.requirements import ID_RANGE

log = logging.getLogger("azbuild.cli")
Handler = Callable[[argparse.Namespace], int]


class StdoutClosed(Exception):
    """Whoever read our stdout stopped reading (`azbuild layers | head -1`)."""


def _out(text: str = "") -> None:
    try:
        sys.stdout.write(redact(text) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed from None


def _err(text: str) -> None:
    sys.stderr.write(redact(text) + "\n")
    sys.stderr.flush()


def _report(
    message: str, hint: str | None, log_format: str, fields: dict[str, Any] | None = None
) -> None:
    """Say what went wrong: a JSON line in JSON mode, red on a terminal, plain text otherwise.
    `fields` go into the JSON line only (the build's id and name)."""
    if log_format == "json":
        extra = {**(fields or {}), **({"hint": hint} if hint else {})}
        log.error("%s", message, extra=extra)
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.text import Text

        console = Console(stderr=True, highlight=False)
        console.print(Text("error: ", style="bold red") + Text(redact(message)))
        if hint:
            console.print(Text("hint: ", style="bold yellow") + Text(redact(hint)))
        return
    _err(f"error: {message}")
    if hint:
        _err(f"hint: {hint}")


def _parse_vars(items: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--var expects NAME=VALUE, found {item!r}")
        values[name.strip()] = value
    return values


def _load(args: argparse.Namespace, path: str, building: bool = False,
          cli_vars: dict[str, str] | None = None, shared_var_files: bool = False) -> Any:
    """Load `path` with the command line's --var (or `cli_vars`, the ones routed to it when
    several templates share the command line) and --var-file values."""
    from builder.template import check_local_inputs, load_template

    build = None
    if getattr(args, "build_identity", None):  # one build of a several-template build
        from builder.multi import parse_build_identity

        build = parse_build_identity(args.build_identity)
    loaded = load_template(
        path, _parse_vars(args.var or []) if cli_vars is None else cli_vars,
        [Path(p) for p in args.var_file or []],
        ignore_undeclared_file_vars=shared_var_files or getattr(args, "shared_var_files", False),
        build=build,
    )
    strict = getattr(args, "strict", False)
    for warning in check_local_inputs(loaded, building=building, strict=strict):
        log.warning("%s", warning)
    return loaded


def _plan(loaded: Any) -> Any:
    from builder.plan import plan_for

    return plan_for(loaded)


# --- commands -----------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from builder.multi import Job, collisions, job_of, route_variables

    cli_vars = _parse_vars(args.var or [])  # a malformed --var is one error, not one per template
    paths: list[str] = list(args.templates)
    failures: list[str] = []
    routed = [cli_vars] * len(paths)
    several = len(paths) > 1
    if several:
        # As `build T1 T2 ...` does: a --var goes to the templates that declare it, and each
        # takes from a var file only the names it declares.
        routed, unknown = route_variables([Path(p) for p in paths], cli_vars,
                                          [Path(p) for p in args.var_file or []])
        failures += [f"no template declares the variable {name!r} (set by --var)"
                     for name in unknown]
    valid: list[Job] = []
    for path, template_vars in zip(paths, routed, strict=True):
        try:
            loaded = _load(args, path, cli_vars=template_vars, shared_var_files=several)
            _plan(loaded)  # what render writes and build executes: it must be makeable
        except AzbuildError as exc:
            failures.append(f"{path}: {exc.message}")
            if args.log_format == "json":
                _log_problems(path, exc)
            continue
        _out(f"{path}: valid ({loaded.template.distro.name} {loaded.template.distro.version})")
        valid.append(job_of(loaded, Path(path), None))
    failures += collisions(valid)  # what `build T1 T2 ...` refuses
    if failures and args.log_format == "json":
        raise UsageError(f"{len(failures)} of {len(args.templates)} templates are invalid")
    if failures:
        raise UsageError("\n".join(failures))
    return EXIT_OK


def _log_problems(template: str | None, exc: AzbuildError) -> None:
    """One JSON record per problem, with `file`, `key` and `line` (null when not known)."""
    if not isinstance(exc, TemplateError):
        log.error("%s", exc.message, extra={"template": template, "file": template,
                                            "key": None, "line": None})
        return
    for problem in exc.details:
        fields: dict[str, Any] = {
            "template": template, "file": str(problem.file) if problem.file else None,
            "key": problem.key, "line": problem.line,
        }
        if problem.column is not None:
            fields["column"] = problem.column
        log.error("%s", problem, extra=fields)  # the message reads whole on its own


def cmd_inspect(args: argparse.Namespace) -> int:
    loaded = _load(args, args.template)
    if args.provenance:
        from builder.provenance import format_provenance, provenance

        origins = provenance(loaded)
        if args.format == "json":
            _out(json.dumps([o.as_dict() for o in origins], indent=2))
        else:
            _out(format_provenance(origins))
        return EXIT_OK
    data = loaded.redacted_dict()
    if args.format == "json":
        _out(json.dumps(data, indent=2))
    else:
        _out(tomli_w.dumps(data).rstrip())
    return EXIT_OK


def cmd_layers(args: argparse.Namespace) -> int:
    from builder.template import available_layers, search_path_warnings

    for warning in search_path_warnings():
        log.warning("%s", warning)
    layers = available_layers()
    for layer in layers:
        shadowing = layer.shadow_warning()
        if shadowing is not None:
            log.warning("%s", shadowing)
    if args.json:
        _out(json.dumps([{"name": layer.name, "file": str(layer.path),
                          "description": layer.description,
                          "shadows": [str(p) for p in layer.shadows]} for layer in layers],
                        indent=2))
        return EXIT_OK
    rows = [("name", "file", "description")]
    rows += [(layer.name, str(layer.path), layer.description) for layer in layers]
    name_width = max(len(row[0]) for row in rows)
    file_width = max(len(row[1]) for row in rows)
    for name, file, description in rows:
        _out(f"{name.ljust(name_width)}  {file.ljust(file_width)}  {description}".rstrip())
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from builder.file_schema import file_json_schema
    from builder.manifest import manifest_json_schema
    from builder.models import template_json_schema
    from builder.report.summary import summary_json_schema

    schema = (manifest_json_schema() if args.manifest else summary_json_schema()
              if args.summary else template_json_schema() if args.resolved
              else file_json_schema())
    _out(json.dumps(schema, indent=2))
    return EXIT_OK


def cmd_distros(args: argparse.Namespace) -> int:
    from distros import all_distros

    rows = [(c.name, c.pretty_name, c.family, ", ".join(c.versions)) for c in all_distros()]
    if args.json:
        _out(json.dumps([dict(zip(("name", "pretty_name", "family", "versions"),
                                  (n, p, f, v.split(", ")), strict=True))
                         for n, p, f, v in rows], indent=2))
        return EXIT_OK
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table("name", "distribution", "versions", box=None, header_style="bold")
        for name, pretty_name, _family, versions in rows:
            table.add_row(name, pretty_name, versions)
        Console(highlight=False).print(table)
        return EXIT_OK
    width = max(len(r[0]) for r in rows)
    pretty = max(len(r[1]) for r in rows)
    _out(f"{'name'.ljust(width)}  {'distribution'.ljust(pretty)}  versions")
    for name, pretty_name, _family, versions in rows:
        _out(f"{name.ljust(width)}  {pretty_name.ljust(pretty)}  {versions}")
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    from builder.context import BuildOptions
    from builder.multi import build_directory
    from builder.pipeline import build, output_directory

    if len(args.templates) > 1:
        return _build_several(args)
    args.template = args.templates[0]
    loaded, output_dir = None, None
    try:
        loaded = _load(args, args.template, building=True)
        output_root = Path(args.output_dir) if args.output_dir else None
        options = BuildOptions(
            force=args.force,
            on_error=args.on_error,
            output_dir=build_directory(loaded, output_root),
            connect=args.connect,
            debug=args.debug,
            log_file=Path(args.log_file) if args.log_file else None,
            use_cache=not args.no_cache,
            simulate=not args.no_simulate,
        )
        output_dir = output_directory(loaded, options)
        if output_root is None or args.build_identity:  # a child of several: the parent sums up
            code: int = build(loaded, options)
        else:
            code = _build_one_summarised(loaded, options, output_root)
    except BaseException as exc:
        if args.junit:
            _write_build_junit(args.junit, args.template, loaded, output_dir, exc)
        raise
    if args.junit:
        _write_build_junit(args.junit, args.template, loaded, output_dir, None)
    return code


def _build_one_summarised(loaded: Any, options: Any, output_root: Path) -> int:
    """One template with --output-dir DIR: DIR/summary.json as for several, however the
    build ends."""
    from datetime import UTC, datetime

    from builder.multi import job_of, manifest_stat, summarise_one
    from builder.pipeline import build
    from builder.report.summary import SUMMARY_FILE

    job = job_of(loaded, Path(loaded.path), output_root)
    before = manifest_stat(job.output_dir)
    started, clock = datetime.now(UTC), time.monotonic()
    code = EXIT_FAILED
    try:
        code = build(loaded, options)
        return code
    except AzbuildError as exc:
        code = exc.exit_code
        raise
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        raise
    except Terminated:
        code = EXIT_TERMINATED
        raise
    finally:
        if job.output_dir.is_dir():  # the build got as far as its output directory
            # Its lines are the build's, as every line of a one-template build is.
            with azlog.build_scope(loaded.build.id, loaded.template.name):
                summarise_one(job, code, started, time.monotonic() - clock, before,
                              output_root.absolute() / SUMMARY_FILE)


def _write_build_junit(target: str, template: str, loaded: Any, output_dir: Path | None,
                       exc: BaseException | None) -> None:
    """--junit of one build: its manifest's verdict, or the error when it wrote none (the
    template did not load, the build stopped before its preflight)."""
    from builder.report.junit import case_of_error, case_of_output_dir, write_junit

    case = None
    if loaded is not None and output_dir is not None:
        case = case_of_output_dir(output_dir, loaded.build.id)
    if case is None:
        message = (exc.message if isinstance(exc, AzbuildError) else
                   "interrupted" if exc is not None else "the build wrote no manifest")
        name = loaded.template.name if loaded is not None else Path(template).stem
        case = case_of_error(name, message)
    write_junit(Path(target), [case])


def _build_several(args: argparse.Namespace) -> int:
    """Several templates: every one validated first, then up to --jobs builds at once."""
    from builder import multi
    from builder.report.summary import summary_table

    if args.log_file:
        raise UsageError("--log-file takes one template",
                         hint="with several, each build keeps its log in its output "
                              "directory's build.log")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, found {args.jobs}")
    output_dir = Path(args.output_dir) if args.output_dir else None
    passthrough = ["--on-error", args.on_error, "--log-format", args.log_format]
    passthrough += ["--force"] if args.force else []
    passthrough += ["--debug"] if args.debug else []
    passthrough += ["--connect", args.connect] if args.connect else []
    passthrough += ["--no-cache"] if args.no_cache else []
    passthrough += ["--no-simulate"] if args.no_simulate else []
    options = multi.Options(cli_vars=_parse_vars(args.var or []),
                            var_files=[Path(p) for p in args.var_file or []],
                            output_dir=output_dir, passthrough=passthrough)
    jobs, problems = multi.plan_jobs(args.templates, options)
    if problems and args.junit:
        from builder.report.junit import case_of_error, write_junit

        write_junit(Path(args.junit), [
            case_of_error(Path(t).stem if t else "(command line)", exc.message)
            for t, exc in problems])
    if problems:
        if args.log_format == "json":
            for template, exc in problems:
                _log_problems(str(template) if template else None, exc)
            raise UsageError(f"{len(problems)} problem(s) in {len(args.templates)} templates;"
                             " no build was started")
        raise UsageError("\n".join(f"{t}: {exc.message}" if t else exc.message
                                    for t, exc in problems),
                         hint="no build was started; fix the templates and run again")
    summary = multi.summary_path(jobs, output_dir)
    try:
        code: int = multi.run_builds(jobs, args.jobs, args.log_format, summary, relay=_err_raw,
                                     show=lambda summary: _out(summary_table(summary)))
    finally:
        if args.junit:
            from builder.report.junit import cases_of_summary, write_junit

            write_junit(Path(args.junit), cases_of_summary(summary))
    return code


def _err_raw(text: str) -> None:
    """A child build's log line, already masked by the child."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def cmd_render(args: argparse.Namespace) -> int:
    from builder.render import render

    loaded = _load(args, args.template)
    plan = _plan(loaded)
    if plan.label_pending:
        log.info("the ISO is not here; the installer's stage 2 label is read at build time")
    for written in render(plan, Path(args.out), force=args.force):
        _out(str(written))
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from builder.image.convert import convert_image

    result = convert_image(Path(args.source), Path(args.destination), force=args.force)
    _out(str(result))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from builder.offline_check.check import run_check

    report = run_check(Path(args.image), skip=args.skip or [],
                       inventory=args.inventory is not None)
    if args.inventory is not None:
        from builder.inventory import write_inventory

        write_inventory(report.inventory, Path(args.inventory))
    _out(report.to_json() if args.json else report.to_table())
    return EXIT_OK if report.ready else EXIT_FAILED


def _seconds(text: str) -> float:
    """A positive number of seconds, for the simulation's bounds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def cmd_simulate(args: argparse.Namespace) -> int:
    from builder.simulate.simulator import SimulateOptions, simulate_image
    from builder.vm.accel import choose_accelerator
    from builder.vm.libvirt import connection_uri

    accel = choose_accelerator(args.accelerator, connection_uri(None))
    options = SimulateOptions(
        firmware=args.firmware, accelerator=accel.accelerator,
        ready_timeout=args.ready_timeout, ssh_timeout=args.ssh_timeout,
        expect_agent=args.expect_agent,
        keep_dir=Path(args.keep_logs) if args.keep_logs else None)
    outcome = simulate_image(Path(args.image), options)
    _out(json.dumps(outcome.to_json(), indent=2) if args.json
         else "\n".join(outcome.summary_lines()))
    return EXIT_OK if outcome.passed else EXIT_FAILED


def cmd_diff(args: argparse.Namespace) -> int:
    from builder.report.diff import diff, to_json, to_table

    comparison = diff(args.old, args.new)
    _out(to_json(comparison) if args.json else to_table(comparison))
    return EXIT_OK if comparison.identical else EXIT_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    from builder.report.junit import case_of_manifest, write_junit
    from builder.report.nightly import collect, summary_table

    report = collect(Path(args.output_dir))
    if not report.rows:
        log.warning("no build found in %s", args.output_dir)
    if args.html:
        from builder.report.html import write_page

        write_page(report, Path(args.html))
    if args.junit:
        write_junit(Path(args.junit), [
            case_of_manifest(row.latest.directory, row.latest.manifest,
                             row.latest.files().get("log")) for row in report.rows])
    _out(summary_table(report))
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    from builder.publish.blob import publish_blob

    result = publish_blob(Path(args.image), args.container_url, args.blob, jobs=args.jobs,
                          force=args.force)
    _out(result.summary())
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    from builder.housekeeping.gc import collect_garbage

    for line in collect_garbage(remove=args.yes, connect=args.connect):
        _out(line)
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    from builder.cache.prune import list_entries, prune, table
    from builder.cache.store import StageCache
    from builder.units import parse_duration, parse_size

    cache = StageCache()
    if args.cache_command == "list":
        listed = list_entries(cache)
        if args.json:
            _out(json.dumps([item.to_json() for item in listed], indent=2))
        else:
            _out(table(listed))
        return EXIT_OK
    if args.older_than is None and args.max_size is None:
        raise UsageError("azbuild cache prune needs --older-than AGE or --max-size SIZE",
                         hint="e.g. azbuild cache prune --older-than 14d --max-size 50GiB")
    try:
        older = parse_duration(args.older_than) if args.older_than is not None else None
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    try:
        size = parse_size(args.max_size) if args.max_size is not None else None
    except ValueError as exc:
        # parse_size speaks of templates' disk sizes: Azure's whole MiB do not matter here.
        raise UsageError(f"--max-size: {str(exc).removesuffix(' Azure needs whole MiB')}"
                         ) from None
    for line in prune(cache, older_than=older, max_size=size, dry_run=args.dry_run):
        _out(line)
    return EXIT_OK


def cmd_fmt(args: argparse.Namespace) -> int:
    from builder.toml_format import format_files

    changed, problems = format_files([Path(p) for p in args.files], check=args.check)
    for path in changed:
        _out(str(path))
    if problems:
        others = "checked" if args.check else "formatted"
        raise UsageError("\n".join(problems), hint=f"the other files were {others}"
                         if len(problems) < len(args.files) else None)
    return EXIT_FAILED if args.check and changed else EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from builder.housekeeping.prune import describe, prune

    if args.json:
        outcome = prune(Path(args.output_dir), args.keep, args.dry_run)
        _out(json.dumps(outcome.to_json(), indent=2))
    else:
        outcome = prune(Path(args.output_dir), args.keep, args.dry_run,
                        on_event=lambda event: _out(describe(event, args.dry_run)))
        _out(outcome.last_line())
    outcome.raise_failures()
    return EXIT_OK


# --- parser -------------------------------------------------------------------------------


class CommandLineError(Exception):
    """A command-line mistake found by argparse, reported in the chosen log format."""

    def __init__(self, prog: str, message: str, usage: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """Raises instead of printing and exiting, so `--log-format json` covers usage errors.
    Subcommand parsers are of the same class (argparse uses the parent's type)."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(self.prog, message, self.format_usage())


def _requested_log_format(argv: Sequence[str]) -> str:
    """--log-format from a command line that argparse could not parse."""
    for index, arg in enumerate(argv):
        if arg == "--log-format" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--log-format="):
            return arg.partition("=")[2]
    return "text"


# Options of the commands, not of azbuild itself (only --debug and --log-format go
# before the command); Packer users write `-var`.
_COMMAND_OPTIONS = ("--var", "--var-file", "-var", "-var-file", "--force", "--out",
                    "--output-dir", "--jobs")


def _with_option_order_hint(exc: CommandLineError, given: list[str]) -> CommandLineError:
    """`azbuild --var x=1 validate t.toml`: say where the option goes."""
    commands = {name for action in build_parser()._actions  # argparse has no public way
                if isinstance(action, argparse._SubParsersAction) for name in action.choices}
    before = next((i for i, arg in enumerate(given) if arg in commands), len(given))
    misplaced = [arg.partition("=")[0] for arg in given[:before]
                 if arg.partition("=")[0] in _COMMAND_OPTIONS]
    if not misplaced:
        return exc
    option = misplaced[0].lstrip("-")
    return CommandLineError(exc.prog, f"{exc.message}\n(--{option} is an option of the command:"
                            f" it goes after it, e.g. azbuild validate T.toml --{option} ...)",
                            exc.usage)


# Packer's single-dash flags whose azbuild option has another name.
_PACKER_FLAGS = {"-parallel-builds": "--jobs", "-machine-readable": "--log-format json"}


def _with_single_dash_hint(exc: CommandLineError, given: list[str]) -> CommandLineError:
    """`azbuild build t.toml -var x=1`, as Packer is typed: name azbuild's option."""
    known = {option for action in _all_actions(build_parser())
             for option in action.option_strings if option.startswith("--")}
    for arg in given:
        flag = arg.partition("=")[0]
        if not (flag.startswith("-") and not flag.startswith("--") and len(flag) > 2):
            continue
        meant = _PACKER_FLAGS.get(flag) or ("-" + flag if "-" + flag in known else None)
        if meant is not None:
            return CommandLineError(
                exc.prog, f"{exc.message}\n(did you mean {meant}? azbuild's options take two"
                f" dashes; Packer's {flag} is {meant} here)", exc.usage)
    return exc


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions of `parser` and of its subcommands, at any depth."""
    found: list[argparse.Action] = []
    for action in parser._actions:  # argparse has no public way
        found.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _all_actions(sub)
    return found


def _report_command_line_error(exc: CommandLineError, log_format: str) -> None:
    if log_format == "json":
        azlog.setup(log_format="json")
        log.error("%s: %s", exc.prog, exc.message, extra={"usage": exc.usage.strip()})
        return
    sys.stderr.write(exc.usage)  # argparse's own form: usage, then "prog: error: ..."
    _err(f"{exc.prog}: error: {exc.message}")


def build_parser() -> argparse.ArgumentParser:
    # Accepted before and after the command. SUPPRESS keeps a subcommand's parser from
    # resetting what was given before the command (`azbuild --debug validate ...`).
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="debug logs, and a traceback with every error")
    common.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                        help="text (default; rich on a terminal) or JSON lines on stderr")

    def with_vars(p: argparse.ArgumentParser) -> None:
        p.add_argument("--var", action="append", metavar="NAME=VALUE",
                       help="set a template variable (repeatable)")
        p.add_argument("--var-file", action="append", metavar="FILE",
                       help="read variables from a TOML file, or JSON if FILE ends in .json"
                            " (repeatable); AZBUILD_VAR_NAME in the environment sets NAME too")

    parser = _Parser(
        prog="azbuild", parents=[common],
        description="Build Azure-ready Linux images from declarative TOML templates.",
        epilog="exit codes: 0 success, 1 the work failed, 2 bad input, 3 input unavailable (a "
               "source could not be fetched), 130 Ctrl-C, 143 SIGTERM",
    )
    parser.add_argument("--version", action="version", version=f"azbuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = command("build", cmd_build, "build an image from a template (or several)")
    p.add_argument("templates", nargs="+", metavar="template")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="with several templates: builds run at once, as memory allows "
                        "(default: 1)")
    p.add_argument("--shared-var-files", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--build-identity", metavar="ID@TIME", help=argparse.SUPPRESS)
    with_vars(p)
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--on-error", choices=("cleanup", "abort"), default="cleanup",
                   help="abort keeps the VM's disk and work directory for debugging")
    p.add_argument("--output-dir", metavar="DIR",
                   help="build into DIR/<name>/ instead of output.directory, and write "
                        "DIR/summary.json (one template or several)")
    p.add_argument("--connect", metavar="URI", help="libvirt URI (overrides vm.connect)")
    p.add_argument("--log-file", metavar="PATH",
                   help="write the build's log (as build.log has it) to PATH as well")
    p.add_argument("--no-cache", action="store_true",
                   help="neither look up nor store stage-cache entries (docs/cache.md)")
    p.add_argument("--no-simulate", action="store_true",
                   help="skip the simulated Azure first boot (docs/simulate.md); the manifest "
                        "says it was skipped")
    p.add_argument("--junit", metavar="FILE",
                   help="also write JUnit XML to FILE: one test case per build, a failed "
                        "build failing with its step, error and the tail of its log")

    p = command("validate", cmd_validate, "check templates without building")
    p.add_argument("templates", nargs="+", metavar="TEMPLATE")
    p.add_argument("--strict", action="store_true",
                   help="a source file that is missing now (needed at build time) is an "
                        "error, not a warning: for CI gates")
    with_vars(p)

    p = command("inspect", cmd_inspect, "print the fully resolved template, secrets redacted")
    p.add_argument("template")
    with_vars(p)
    p.add_argument("--format", choices=("toml", "json"), default="toml",
                   help="output format (default: toml)")
    p.add_argument("--provenance", action="store_true",
                   help="show which file (template, layer, var file), --var or default set"
                        " each value")

    p = command("render", cmd_render, "write everything a build would feed the VM")
    p.add_argument("template")
    with_vars(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory to write into: new or empty, unless --force")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out whole")

    p = command("layers", cmd_layers, "list the layers `extends` can name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("schema", cmd_schema,
                "print the JSON Schema of a template or layer file (for editors and taplo)")
    p.add_argument("--resolved", action="store_true",
                   help="print the schema of the resolved template (`inspect --format json`)"
                        " instead: required keys, no ${...} references")
    p.add_argument("--manifest", action="store_true",
                   help="print the JSON Schema of a build's manifest.json instead")
    p.add_argument("--summary", action="store_true",
                   help="print the JSON Schema of a several-template build's summary.json "
                        "instead")
    p = command("distros", cmd_distros, "list supported distros and versions")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("convert", cmd_convert, "convert a disk image to an Azure fixed VHD")
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DST.vhd")
    p.add_argument("--force", action="store_true", help="overwrite DST")

    p = command("check", cmd_check, "check an image offline for Azure readiness")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--skip", action="append", metavar="ID", help=f"skip a requirement ({ID_RANGE})")
    p.add_argument("--inventory", metavar="FILE",
                   help="also write the image's inventory (packages, kernels, services, "
                        "os-release) to FILE as JSON")

    p = command("simulate", cmd_simulate,
                "boot an image as Azure provisions it, offline: Ready, then SSH on the first "
                "boot (docs/simulate.md)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.add_argument("--firmware", choices=("bios", "uefi"),
                   help="Gen1 (bios) or Gen2 (uefi); default: the manifest beside the image, "
                        "else the disk's partition table")
    p.add_argument("--accelerator", choices=("auto", "kvm", "tcg"), default="auto",
                   help="default: KVM when it works here, else TCG")
    p.add_argument("--expect-agent", choices=("waagent", "cloud-init"),
                   help="fail unless this agent reports Ready (default: the manifest's "
                        "azure.provisioning, if a manifest is beside the image)")
    p.add_argument("--ready-timeout", type=_seconds, default=900.0, metavar="SECONDS",
                   help="bound on the wait for the agent's Ready report (default: 900)")
    p.add_argument("--ssh-timeout", type=_seconds, default=180.0, metavar="SECONDS",
                   help="bound on the wait for SSH after Ready (default: 180)")
    p.add_argument("--keep-logs", metavar="DIR",
                   help="copy the guest's console and the fabric's request log into DIR")

    p = command("diff", cmd_diff, "show what changed between two builds (exit 1 if anything)")
    p.add_argument("old", metavar="OLD", help="a manifest.json, an output directory or an image")
    p.add_argument("new", metavar="NEW", help="likewise")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("publish", cmd_publish, "upload a fixed VHD to Azure as a page blob, verified")
    p.add_argument("image", metavar="IMAGE.vhd")
    p.add_argument("--container-url", required=True, metavar="URL",
                   help="https://ACCOUNT.blob.core.windows.net/CONTAINER[?SAS]")
    p.add_argument("--blob", metavar="NAME", help="the blob's name (default: the file's name)")
    p.add_argument("--jobs", type=int, default=8, metavar="N",
                   help="Put Page requests in flight (default: 8)")
    p.add_argument("--force", action="store_true",
                   help="publish an image that is not ready, and replace a blob holding "
                        "another image")

    p = command("report", cmd_report,
                "the latest build of each template in an output directory, and what changed")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    p.add_argument("--html", metavar="FILE",
                   help="write a self-contained HTML page: one row per template (status, "
                        "steps, readiness, cache, changes, links to log, manifest and SBOM)")
    p.add_argument("--junit", metavar="FILE",
                   help="write JUnit XML: one test case per template's latest build")

    p = command("prune", cmd_prune,
                "remove all but the N newest good builds of each template in an output "
                "directory")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    p.add_argument("--keep", type=int, required=True, metavar="N",
                   help="good (succeeded, ready) builds to keep per template name, newest by "
                        "the manifest's `finished`; failed builds newer than the newest good "
                        "one are kept too")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed; remove "
                   "nothing")
    p.add_argument("--json", action="store_true",
                   help="print what was (would be) removed and kept, and why, as JSON")

    p = command("fmt", cmd_fmt, "rewrite TOML files (templates, layers, var files) in the "
                "canonical layout, comments kept")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true",
                   help="change nothing; list the files that would change and exit 1 if any")

    p = command("cache", cmd_cache, "list or prune the stage cache (docs/cache.md)")
    cache_sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    q = cache_sub.add_parser("list", parents=[common], help="list the entries")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q = cache_sub.add_parser("prune", parents=[common],
                             help="remove entries (an entry removed takes its children along)")
    q.add_argument("--older-than", metavar="AGE",
                   help="remove entries last used more than AGE ago (e.g. 14d, 12h)")
    q.add_argument("--max-size", metavar="SIZE",
                   help="then remove the least recently used until the cache holds at most "
                        "SIZE (e.g. 50GiB)")
    q.add_argument("--dry-run", action="store_true", help="say what would be removed")

    p = command("gc", cmd_gc, "list (and with --yes remove) leftover domains and work dirs")
    p.add_argument("--yes", action="store_true", help="remove what is listed")
    p.add_argument("--connect", metavar="URI", help="libvirt URI")
    return parser


def _build_of(exc: BaseException) -> dict[str, Any]:
    """The build_id and build_name an error of a build carries (see log.build_scope)."""
    fields = getattr(exc, azlog.BUILD_ATTRIBUTE, None)
    return dict(fields) if isinstance(fields, dict) else {}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CommandLineError as exc:
        given = sys.argv[1:] if argv is None else argv
        exc = _with_single_dash_hint(_with_option_order_hint(exc, list(given)), list(given))
        _report_command_line_error(exc, _requested_log_format(given))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version exit 0
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # Both options default to SUPPRESS (see build_parser), so fill them in here.
    args.debug = getattr(args, "debug", False)
    args.log_format = getattr(args, "log_format", "text")
    log_format: str = args.log_format
    azlog.setup(debug=args.debug, log_format=log_format)
    # Ctrl-C raises KeyboardInterrupt even when the parent started us with SIGINT ignored
    # (a shell's background job); SIGTERM raises Terminated. Both unwind the same way.
    # Handlers can only be set from the main thread (main() called from a thread skips them).
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handler: Handler = args.handler
        return handler(args)
    except AzbuildError as exc:
        if args.debug:
            log.debug("traceback of the error below", exc_info=True)
        message = exc.message
        if log_format == "json" and isinstance(exc, TemplateError):
            # One record per problem, then the headline: no multi-line message.
            _log_problems(getattr(args, "template", None), exc)
            message = message.splitlines()[0].removesuffix(":")
        _report(message, exc.hint, log_format, _build_of(exc))
        return exc.exit_code
    except KeyboardInterrupt as exc:
        _report("interrupted by Ctrl-C; cleaned up", None, log_format, _build_of(exc))
        return EXIT_INTERRUPTED
    except Terminated as exc:
        _report("terminated by SIGTERM; cleaned up", None, log_format, _build_of(exc))
        return EXIT_TERMINATED
    except StdoutClosed:
        # As a Unix tool killed by SIGPIPE: no message, 128 + SIGPIPE; nothing more is
        # written to the closed pipe when Python flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED
    except Exception as exc:  # a bug: say so plainly, traceback only with --debug
        if args.debug:
            log.debug("traceback of the internal error below", exc_info=True)
        _report(
            f"internal error: {type(exc).__name__}: {exc}",
            "rerun with --debug for a traceback, and please report it",
            log_format,
            _build_of(exc),
        )
        return EXIT_FAILED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)


if __name__ == "__main__":
    raise SystemExit(main())
