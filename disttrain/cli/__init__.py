"""The `disttrain` command line, a client of `disttrain.api`: parsing (`parser`, a table of verbs) and each verb's
printing (`commands`); it imports nothing of disttrain but the API and the errors (tests/test_thin_cli.py).
`main(argv)` runs a verb in this process and returns its exit code; bad input is one line on stderr, exit 2."""

from __future__ import annotations

import os
import sys

from disttrain.cli.parser import build_parser
from disttrain.errors import EXTRAS, DisttrainError, missing


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        # Overrides may stand on either side of options (`plan cfg.yaml --world-size 2 train.batch_size=8`).
        args, extra = parser.parse_known_args(argv)
        unknown = [item for item in extra if item.startswith("-")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.items = [*args.items, *extra]
        return args.func(args)
    except DisttrainError as exc:
        print(f"disttrain: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency a verb reached without asking first
        if (exc.name or "").split(".")[0] not in EXTRAS:
            raise
        print(f"disttrain: error: {missing(exc.name, 'this command')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `disttrain ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    """Console entry point: `train` ends like a worker (no interpreter teardown after communication)."""
    code = main()
    if "torch" not in sys.modules:  # commands that never touched torch (data, plan checks) exit normally
        sys.exit(code)
    from disttrain import api

    api.exit_now(code)
