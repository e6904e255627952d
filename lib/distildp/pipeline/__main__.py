"""`python -m distildp.pipeline`: build the public models and check gate 1, or one method's row
(distildp.pipeline.cli)."""

from distildp.pipeline.cli import main

raise SystemExit(main())
