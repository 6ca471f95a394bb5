"""``python -m opeva_devserver``."""

from .cli import main

raise SystemExit(main())
