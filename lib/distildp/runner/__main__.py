"""`python -m distildp.runner`: the experiment runner's command line (distildp.runner.cli)."""

from distildp.runner.cli import main

raise SystemExit(main())
