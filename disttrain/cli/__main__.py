"""`python -m disttrain.cli`: the console entry point."""

from disttrain.cli import entry

entry()
