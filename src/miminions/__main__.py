"""``python -m miminions``: the ``miminions`` command (see :mod:`miminions.cli`)."""

from miminions.cli import main

raise SystemExit(main())
