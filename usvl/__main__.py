"""``python -m usvl`` runs the ``usvl`` command."""

from usvl.cli import main

raise SystemExit(main())
