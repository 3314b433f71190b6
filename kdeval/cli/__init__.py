"""The kdeval command line: each command parses its options, checks them, and delegates to one
library function; known input problems become one line on stderr and exit status 2.

common.py holds what the commands share; each other module holds a few commands, which it
registers on the app when imported.
"""

import importlib

from kdeval.cli.common import app, user_errors

# imported in the order `kdeval --help` lists their commands
COMMAND_MODULES = ("training", "models", "study", "pages", "robustness", "convert")
for _module in COMMAND_MODULES:
    importlib.import_module(f"kdeval.cli.{_module}")

__all__ = ["app", "main", "user_errors"]


def main() -> None:
    app(prog_name="kdeval")
