"""`python -m simserve` is the `simserve` command."""

from simserve.cli import main

raise SystemExit(main())
