"""`python -m intact` runs the same CLI as the `intact` console script."""

from intact.cli import main

raise SystemExit(main())
