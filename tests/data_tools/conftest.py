"""Fixtures of the data-tool tests: the console scripts as setup.py declares them."""
import ast
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def declared_console_scripts() -> dict:
    """{script name: "module:function"} from setup.py's CONSOLE_SCRIPTS."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CONSOLE_SCRIPTS" for t in node.targets):
            return dict(entry.replace(" ", "").split("=", 1) for entry in ast.literal_eval(node.value))
    raise AssertionError("setup.py defines no CONSOLE_SCRIPTS")


@pytest.fixture
def console_scripts() -> dict:
    return declared_console_scripts()


@pytest.fixture
def console_script():
    """name -> (command, env) running that console script as pip's generated stub does (import the declared
    function, sys.argv[0] = the script name, sys.exit(function())), against this checkout.

    The console scripts installed in the venv import whichever checkout was installed (`pip install -e`), so
    a test of *this* tree runs the same stub with this tree first on the path."""
    scripts = declared_console_scripts()

    def command(name):
        module, function = scripts[name].split(":")
        stub = (f"import sys\nfrom {module} import {function}\nsys.argv[0] = {name!r}\n"
                f"sys.exit({function}())")
        return [sys.executable, "-c", stub], dict(os.environ, PYTHONPATH=str(REPO))

    return command
