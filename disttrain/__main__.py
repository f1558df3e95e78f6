"""`python -m disttrain`: the `disttrain` command."""

from disttrain.cli import entry

entry()
