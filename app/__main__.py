"""`python -m app` runs the mavera-gateway command."""

from __future__ import annotations

import sys

from app.cli import main

sys.exit(main())
