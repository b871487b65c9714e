"""``python -m tinkex_persist``: the command line."""

from .cli import main

raise SystemExit(main())
