"""`python -m tests.gateway_main ARGS`: the mavera-gateway command with the limits' time constants
from MGW_TEST_* environment variables, so that tests running gateway processes see rate windows
and concurrency places lapse within seconds (the product counts 60 s windows, 30 s places)."""

from __future__ import annotations

import os
import sys

import app.limits.admission as admission
from app.cli import main

for _name in ("WINDOW_S", "SHARED_MARGIN_S", "SLOT_TTL_S", "HEARTBEAT_S"):
    _value = os.environ.get(f"MGW_TEST_{_name}")
    if _value:
        setattr(admission, _name, float(_value))

sys.exit(main())
