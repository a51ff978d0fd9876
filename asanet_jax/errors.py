"""How every script reports failures: one line, not a traceback.

A user error (a missing or unreadable file, a bad value, a checkpoint or dataset that
does not fit, a full disk, a read-only folder) prints ``error: <reason>`` naming the
path or value, and exits with status 1; Ctrl-C prints one line and exits with status
130. Anything else is a bug and keeps its traceback.

absl scripts (train, eval, predict) run through ``run_absl``, which also turns a bad
command-line flag, such as an unknown config field, into one line.
"""

from __future__ import annotations

import logging
import pathlib
import re
import signal
import sys
from collections.abc import Callable

from asanet_jax.interrupts import SCRIPT

USER_ERRORS = (ValueError, OSError)


def describe(error: BaseException) -> str:
    """The reason, with the path first for OS errors (`[Errno 28] ...` made readable)."""
    if isinstance(error, OSError) and error.filename is not None:
        reason = error.strerror or str(error)
        target = f"{error.filename} -> {error.filename2}" if error.filename2 else error.filename
        return f"{target}: {reason[0].lower() + reason[1:] if reason else type(error).__name__}"
    return str(error).strip() or type(error).__name__


def show_messages() -> None:
    """Show the library's log messages (``logging.getLogger('asanet_jax...')``, INFO and up)
    on stderr, as plain lines, from process 0 of a multi-host run only."""
    logger = logging.getLogger("asanet_jax")
    if any(isinstance(h, _MessageHandler) for h in logger.handlers):
        return
    logger.addHandler(_MessageHandler(sys.stderr))
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not again through absl's handler on the root logger


class _MessageHandler(logging.StreamHandler):
    def __init__(self, stream):
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(message)s"))

    def filter(self, record) -> bool:
        return "jax" not in sys.modules or sys.modules["jax"].process_index() == 0


def run(main: Callable[[], int | None]) -> int:
    """Call ``main()``; map user errors and Ctrl-C to one line and an exit status."""
    show_messages()
    interrupts = SCRIPT
    interrupts.install()  # for a script that did not call interrupts.hold
    if not interrupts.starting:  # run() again in one process: a fresh start
        interrupts.seen = False
    try:
        interrupts.starting = False
        if interrupts.seen:  # during start-up: report it before any work
            raise KeyboardInterrupt
        status = main() or 0
        # The work is done: an interrupt during interpreter shutdown would only print noise.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return status
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) or interrupts.seen:
            _quiet_after_failure()
            print("interrupted", file=sys.stderr)
            return 130
        if isinstance(e, USER_ERRORS):
            _quiet_after_failure()
            print(f"error: {describe(e)}", file=sys.stderr)
            return 1
        raise


def _quiet_after_failure() -> None:
    """Before the one line: close progress bars a failure left open (they would redraw
    after it), and silence the asyncio tasks and coroutines of writers cut short, whose
    complaints at exit would only repeat the error."""
    import warnings

    if "tqdm" in sys.modules:
        from tqdm import tqdm

        bars = list(getattr(tqdm, "_instances", ()))
        for bar in bars:
            bar.close()
        if bars:
            print(file=sys.stderr)  # a closed bar leaves the cursor mid-line
    sys.stdout.flush()
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")


def run_absl(main: Callable[[list[str]], int | None], doc: str | None = None) -> None:
    """``absl.app.run(main)`` with one-line errors, bad flags included; exits. `doc` (the
    program's docstring) is what ``--help`` shows, whichever file started it."""
    from absl import app, flags

    if doc:
        sys.modules["__main__"].__doc__ = doc
    # --help lists the key flags of the file that started (a shim or a console script);
    # the flags are the program module's.
    for flag in flags.FLAGS.get_flags_for_module(main.__module__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    def parse(argv: list[str]) -> list[str]:
        try:
            rest = flags.FLAGS(argv)
            _load_config_files(flags.FLAGS)
            return rest
        except flags.Error as e:
            print(f"error: {_flag_error(e)}", file=sys.stderr)
        except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
            print(f"error: {_config_flag_error(e, argv)}", file=sys.stderr)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(1)

    app.run(lambda argv: sys.exit(run(lambda: main(argv))), flags_parser=parse)


def _load_config_files(values) -> None:
    """Load config files now, so that a missing or broken one fails before any work."""
    for name in list(values):
        holder = values[name]
        if "." in name or not holder.present:  # a field override, or an unset flag
            continue
        path = getattr(holder, "config_filename", None)
        if path is None:
            continue
        file = path.partition(":")[0]
        if not pathlib.Path(file).is_file():
            raise FileNotFoundError(2, "no such config file", file)
        holder.value  # noqa: B018 -- loading the file raises what is wrong with it


def _flag_error(error: BaseException) -> str:
    """absl's message, with a config file's traceback cut to its last line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[0].rstrip(':')}: {lines[-1]}"
    return " ".join(lines)


def _config_flag_error(error: BaseException, argv: list[str]) -> str:
    """One line for a config flag ml_collections refused (an unknown field, say)."""
    if isinstance(error, OSError):
        return describe(error)
    text = str(error).replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    field = re.search(r"'([^' ]+)'", text)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    if field:
        flag = next((a for a in argv[1:] if f".{field[1]}" in a.split("=")[0]), "--config")
        hint = f"; did you mean {suggestion[1]!r}?" if suggestion else ""
        return f"{flag}: no config field {field[1]!r}{hint}"
    return f"bad config flag: {text.strip()}"
