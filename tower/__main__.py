"""`python -m tower`: the same as the `tower` command."""

from tower.cli import main

raise SystemExit(main())
