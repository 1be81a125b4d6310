"""``python -m schedlang``: the same as the ``schedlang`` command."""

from schedlang.cli import run

run()
