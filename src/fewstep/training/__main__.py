"""`python -m fewstep.training ...` == `fewstep train ...` (see cli.py); works under torchrun."""

from .cli import main

raise SystemExit(main())
