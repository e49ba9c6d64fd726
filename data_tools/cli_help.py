"""Command-line helpers shared by the data tools: flag parsing whose errors are one-line usage errors
(exit 2), `--help` for console scripts (a tool's own flags and docstring when `__main__` is a generated
stub), and defining a flag once when tools are imported together."""
from __future__ import annotations

import sys

EXIT_USAGE = 2


def usage_error(message: str):
    """Print `error: message` (one line) to stderr and exit 2: a mistake in the command line."""
    print(f"error: {' '.join(str(message).split(chr(10)))}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def parse_flags(argv):
    """`flags_parser` for `absl.app.run`: a bad, unknown or missing flag, or a stray positional argument, is a
    one-line usage error (exit 2) instead of absl's help text and exit 1. Returns argv without the flags."""
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        usage_error("; ".join(line.strip() for line in str(e).splitlines() if line.strip()))
    if len(rest) > 1:
        usage_error(f"unexpected positional argument(s) {' '.join(rest[1:])!r}: every option is a flag, "
                    "written --name=value (see --help)")
    return rest


def writable_dir_problem(path: str):
    """Why directory `path` cannot be created or written (None if it can)."""
    import os

    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        up = os.path.dirname(probe)
        if up == probe:
            break
        probe = up
    if not os.path.isdir(probe):
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot create files in {probe}: permission denied"
    return None


def expose_flags_in_help(module_name: str) -> None:
    """Make every flag defined by `module_name` (and the writer's output flags) a key flag of the program
    being run, and lend its docstring to `__main__` when that has none (console-script stubs)."""
    from absl import flags

    fv = flags.FLAGS
    program = sys.argv[0]
    owners = {module_name, "data_tools.writer.cli", __name__}  # (define_flag defines flags from this module)
    for owner, flag_list in list(fv.flags_by_module_dict().items()):
        if owner in owners and owner != program:
            for flag in flag_list:
                fv.register_key_flag_for_module(program, flag)
    main = sys.modules.get("__main__")
    if main is not None and not main.__doc__:
        main.__doc__ = getattr(sys.modules.get(module_name), "__doc__", None)


def define_flag(kind: str, name: str, *args, **kwargs) -> None:
    """`flags.<kind>(name, ...)` unless a flag of that name exists already (tools imported together share
    it, and defining a tool's flags twice is harmless)."""
    from absl import flags

    if name not in flags.FLAGS:
        getattr(flags, kind)(name, *args, **kwargs)
