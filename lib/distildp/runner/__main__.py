"""`python -m distildp.runner`: the experiment runner's command line (distildp.runner.run)."""

from distildp.runner.run import main

raise SystemExit(main())
