"""`python -m data_prep <stage>`: hand the command line to data_prep.cli."""

from data_prep.cli import main

raise SystemExit(main())
