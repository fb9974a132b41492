"""Command-line overrides for the flags at the top of every stage script.

A stage script keeps its settings as plain module variables (edit them and run the script), then
calls ``apply_cli_flags(globals())``: every ``--name=value`` on the command line replaces the
variable of that name, converted to the type of its default. A flag is any module-level name that
does not start with an underscore, is not written in capitals only (those are constants), and holds
a bool, int, float, str, None, list or tuple.

    python capsule_classifier/train.py --epochs=30 --CrossValidation=False --data_path=a.h5,b.h5

A script with a ``preset`` flag and a constant ``PRESETS`` (a folder name under ``presets/``) also
takes ``--preset=NAME``: the values of ``presets/<PRESETS>/NAME.json`` (or of a path to a .json
file) are applied first, so that the other flags on the command line override them.
"""
import ast
import difflib
import json
import signal
import sys
import threading
from pathlib import Path

_FLAG_TYPES = (bool, int, float, str, list, tuple, type(None))
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}
PRESET_ROOT = Path(__file__).resolve().parents[1] / "presets"


class FlagError(SystemExit):
    """A bad flag name or value; exits with status 2 and a message naming the valid flags."""

    def __init__(self, message):
        super().__init__(message)
        self.code = 2


def flag_names(namespace):
    """The names in ``namespace`` (a module's globals) that count as flags, in definition order."""
    return [name for name, value in namespace.items()
            if not name.startswith("_") and not name.isupper() and isinstance(value, _FLAG_TYPES)]


def convert(text, default, name="flag"):
    """Turn the command-line ``text`` into a value of the same kind as ``default``."""
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise FlagError(f"--{name}: expected true or false, got {text!r}")
    if isinstance(default, int):
        number = _number(text, name, "an integer")
        if float(number) != int(number):
            raise FlagError(f"--{name}: expected an integer, got {text!r}")
        return int(number)
    if isinstance(default, float):
        return float(_number(text, name, "a number"))
    if isinstance(default, (list, tuple)):
        if text.strip().startswith(("[", "(")):
            items = _literal(text, name)
            if not isinstance(items, (list, tuple)):
                raise FlagError(f"--{name}: expected a list, got {text!r}")
        else:
            items = [part for part in text.split(",") if part.strip()]
            if default:
                items = [convert(part, default[0], name) for part in items]
            else:
                items = [_literal_or_text(part) for part in items]
        return type(default)(items)
    if default is None:
        return _literal_or_text(text)
    return text


def _number(text, name, what):
    try:
        return float(text) if any(c in text.lower() for c in ".en") else int(text)
    except ValueError:
        raise FlagError(f"--{name}: expected {what}, got {text!r}") from None


def _literal(text, name):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise FlagError(f"--{name}: cannot read {text!r} as a Python literal") from None


def _literal_or_text(text):
    if text.strip().lower() in ("none", "null", ""):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def describe(namespace):
    """One line per flag: its name and current value."""
    names = flag_names(namespace)
    width = max((len(n) for n in names), default=0)
    return "\n".join(f"  --{name.ljust(width)} = {namespace[name]!r}" for name in names)


def apply_cli_flags(namespace, argv=None):
    """Override the flags in ``namespace`` from ``argv`` (default ``sys.argv[1:]``) in place.

    Returns a dict of every flag and its final value, for logging and for the output files.
    ``--help`` prints the module docstring and the flags, then exits.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    _exit_cleanly_on_sigterm()
    try:
        return _apply(namespace, argv)
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr)
        raise


def _exit_cleanly_on_sigterm():
    """Turn SIGTERM (a scheduler's kill, ``kill PID``) into SystemExit, so that ``finally`` blocks
    run and half-written ``.partial`` files are removed, as they are on Ctrl-C."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))


def load_preset(kind, name, flags=None):
    """The flag values of ``presets/<kind>/<name>.json`` (or of a path to a .json file); with
    ``flags`` (the script's flag names) a value for anything else is refused, naming the file.
    Raises ValueError naming the file and the problem."""
    path = Path(name) if str(name).endswith(".json") else PRESET_ROOT / kind / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in (PRESET_ROOT / kind).glob("*.json"))
        raise ValueError(f"--preset={name}: no preset file {path} (presets: {known})")
    try:
        with open(path) as handle:
            values = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable preset file ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a preset holds {{flag: value}} pairs, not {type(values).__name__}")
    unknown = sorted(set(values) - set(flags)) if flags is not None else []
    if unknown:
        raise ValueError(f"{path}: a preset holds {{flag: value}} pairs of this script's flags; unknown: {unknown}")
    return values


def preset_value(value, default, name):
    """A preset's JSON value as the flag's type: text is read as on the command line, lists stay
    lists, numbers and booleans are converted like their text."""
    if value is None:
        if default is not None:
            raise FlagError(f"--{name}: null is not a value for this flag (default {default!r})")
        return None
    if isinstance(value, str):
        return convert(value, default, name)
    if default is None:
        return value
    if isinstance(value, list) and isinstance(default, (list, tuple)):
        return type(default)(value)
    return convert(str(value), default, name)


def _apply_preset(namespace, argv, names):
    chosen = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--preset=")]
    if not chosen or "preset" not in names or "PRESETS" not in namespace:
        return
    try:
        values = load_preset(namespace["PRESETS"], chosen[-1], names)
    except ValueError as error:
        raise FlagError(str(error)) from None
    for name, value in values.items():
        namespace[name] = preset_value(value, namespace[name], name)


def _apply(namespace, argv):
    names = flag_names(namespace)
    if not any(arg in ("-h", "--help") for arg in argv):
        _apply_preset(namespace, argv, names)
    for arg in argv:
        if arg in ("-h", "--help"):
            print((namespace.get("__doc__") or "").strip())
            print("\nFlags (edit them at the top of the script or pass --name=value):")
            print(describe(namespace))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise FlagError(f"unexpected argument {arg!r}: flags are written --name=value\n"
                            f"valid flags:\n{describe(namespace)}")
        name, has_value, text = arg[2:].partition("=")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise FlagError(f"unknown flag --{name}{hint}\nvalid flags:\n{describe(namespace)}")
        default = namespace[name]
        if not has_value:
            if not isinstance(default, bool):
                raise FlagError(f"--{name} needs a value: --{name}=VALUE")
            text = "true"
        namespace[name] = convert(text, default, name)
    return {name: namespace[name] for name in names}


def run_script(run, namespace, expected=()):
    """Apply the command-line flags to ``namespace`` and call ``run(flags)``; the errors listed in
    ``expected`` (their messages name the file and field) end the script with ``error: ...``
    and exit status 1 instead of a traceback."""
    flags = apply_cli_flags(namespace)
    try:
        return run(flags)
    except expected as error:
        sys.exit(f"error: {error}")
