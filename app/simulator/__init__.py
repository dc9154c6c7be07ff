"""A scriptable imitation of the Mavera API, for trying the gateway and for its tests.

See ``app.simulator.app`` for the routes, the order of checks and the billing rule, and
``app.simulator.script`` for how a request's script is chosen.
"""

from __future__ import annotations

from app.simulator.app import Simulator
from app.simulator.delivery import StreamCut
from app.simulator.generate import credit_cost
from app.simulator.personas import PERSONAS, Persona, persona_ids
from app.simulator.script import SimRecord, SimScript

__all__ = [
    "PERSONAS",
    "Persona",
    "SimRecord",
    "SimScript",
    "Simulator",
    "StreamCut",
    "credit_cost",
    "persona_ids",
]
