"""``python -m vmferry.cli``: the ``vmferry`` command."""

from vmferry.cli import app

app()
