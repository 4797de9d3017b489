"""The ``leukoedge`` command: thin commands over the library, one error handler.

Commands are assembled here from ``leukoedge.commands.*``; plugins (training) add theirs
through the ``leukoedge.plugins`` entry point. Every command returns an exit code;
:func:`main` turns a :class:`~leukoedge.errors.LeukoedgeError` into one line on stderr and
its exit code, KeyboardInterrupt into 130 and SIGTERM into 143 (see :func:`guarded`).
``LEUKOEDGE_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import typer

from .errors import EXIT_SIGINT, EXIT_USAGE, Interrupted, LeukoedgeError

#: the attribute :func:`guarded` sets on its wrapper (load_plugins wraps what lacks it)
GUARDED = "leukoedge_guarded"

app = typer.Typer(
    name="leukoedge",
    help="ALL vs HEM classification of segmented B-lymphoid cells: train (plugin), export "
         "to ONNX, classify and evaluate image folders fast with onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def guarded(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Wrap a command: its return value is the exit code; a LeukoedgeError becomes one
    line on stderr and its exit code; Ctrl-C becomes 130. Plugin commands get it from
    :func:`leukoedge.plugins.load_plugins`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        debug = os.environ.get("LEUKOEDGE_DEBUG") == "1"
        try:
            code = fn(*args, **kwargs)
        except KeyboardInterrupt:
            if debug:
                raise
            _print_error(Interrupted(signal.SIGINT))
            raise typer.Exit(EXIT_SIGINT) from None
        except LeukoedgeError as exc:
            if debug:
                raise
            _print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        if code:
            raise typer.Exit(code)

    setattr(wrapper, GUARDED, True)  # noqa: B010 (a marker load_plugins looks for)
    return wrapper


def command(fn: Callable[..., int | None], name: str | None = None, **kw: Any) -> None:
    """Register ``fn`` (which returns an exit code) as a guarded command."""
    app.command(name=name, **kw)(guarded(fn))


def _register_builtin() -> None:
    from .commands import (
        bench,
        calibrate,
        classify,
        demo,
        doctor,
        evaluate,
        info,
        report,
        serve,
        synth,
    )

    command(classify.classify, "classify")
    command(evaluate.evaluate, "evaluate")
    command(calibrate.calibrate, "calibrate")
    command(report.report, "report")
    command(info.info, "info")
    command(doctor.doctor, "doctor")
    command(bench.bench, "bench")
    command(synth.synth, "synth")
    command(demo.demo, "demo")
    command(serve.serve, "serve")


def _register_plugins() -> None:
    from .plugins import TRAIN_COMMANDS, load_plugins, missing_extra_message

    infos = load_plugins(app)
    for info in infos:
        if info.error:
            from .console import note

            note(f"plugin {info.name} did not load: {info.error}")
    have = {c.name for c in app.registered_commands}
    for name in TRAIN_COMMANDS:
        if name not in have:
            def stub(ctx: typer.Context, _name: str = name) -> int:
                from .errors import MissingExtraError
                from .plugins import TRAIN_EXTRA_HINT

                raise MissingExtraError(missing_extra_message(_name), TRAIN_EXTRA_HINT)

            command(stub, name, help=f"(needs the train extra) {name}",
                    context_settings={"allow_extra_args": True,
                                      "ignore_unknown_options": True})


_assembled = False


def assemble() -> typer.Typer:
    global _assembled
    if not _assembled:
        _register_builtin()
        _register_plugins()
        _assembled = True
    return app


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def _print_error(exc: LeukoedgeError) -> None:
    from .console import err, escape

    line = f"[bold red]error:[/bold red] {escape(exc.message)}"
    if exc.hint:
        line += f" [dim]({escape(exc.hint)})[/dim]"
    err.print(line)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        assemble()
        app(args=argv, prog_name="leukoedge")
        return 0
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run() -> None:
    sys.exit(main())
