"""`python -m monitor` runs the `keyhealth` command line."""

from monitor.entry.cli import main

raise SystemExit(main())
