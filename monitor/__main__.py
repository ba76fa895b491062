"""`python -m monitor` runs the `keyhealth` command line."""

from monitor.cli import main

raise SystemExit(main())
