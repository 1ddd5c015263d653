"""The ``viscope`` command: it assembles each job's own command module.

A job's options and its one call live beside the job (``invariance/command.py``,
``train/command.py``, ``explain/command.py``, ``experiments/command.py``); what they share
is in :mod:`viscope.cli_common`. A new job adds its ``command.py`` and one line below.

User errors (unknown names, layer patterns that match nothing, missing paths) end with
a one-line message that says how to fix them and exit status 2, without a traceback.
"""

from __future__ import annotations

import sys

import typer

from viscope.errors import ViscopeError
from viscope.experiments.command import demo, matrix
from viscope.experiments.init_study.command import init_study
from viscope.experiments.quality.command import quality
from viscope.experiments.ssl_study.command import ssl_study
from viscope.explain.command import explain
from viscope.invariance.command import invariance
from viscope.listing import list_app
from viscope.report.command import report
from viscope.train.command import train
from viscope.train.ssl.command import pretrain
from viscope.weakseg.command import weakseg

app = typer.Typer(
    help="Look inside vision models: invariance, explanations, weak labels, training methods.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(list_app, name="list")
for _command in (invariance, matrix, demo, train, pretrain, explain, weakseg, quality, report):
    app.command()(_command)
app.command(name="ssl-study")(ssl_study)
app.command(name="init-study")(init_study)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _usage_error(e: BaseException) -> bool:
    """A click usage error (click's own or the copy typer >= 0.20 vendors): it can show
    itself and carries an exit code."""
    return callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit status 2."""
    import warnings

    warnings.formatwarning = _one_line_warning  # no source path and line on the console
    try:
        code = app(args=argv, standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into this return value
            _interrupted()
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except ViscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as e:
        print(f"error: {e}. Check the path (an --out folder must be a folder you can write).",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as e:  # click usage errors carry their own exit code
        if _usage_error(e):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        if type(e).__name__ == "Abort":  # click wraps Ctrl-C in Abort
            if isinstance(e.__cause__, KeyboardInterrupt):
                _interrupted()
            sys.exit(1)
        raise


def _interrupted() -> None:
    """Ctrl-C: exit 130 (a command that saved its work has said where, e.g. invariance)."""
    print("interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
    main()
