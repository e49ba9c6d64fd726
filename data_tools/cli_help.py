"""`--help` for console scripts: show a tool's own flags and docstring when `__main__` is a generated stub."""
from __future__ import annotations

import sys


def expose_flags_in_help(module_name: str) -> None:
    """Make every flag defined by `module_name` (and the writer's output flags) a key flag of the program
    being run, and lend its docstring to `__main__` when that has none (console-script stubs)."""
    from absl import flags

    fv = flags.FLAGS
    program = sys.argv[0]
    owners = {module_name, "data_tools.writer.cli"}
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
