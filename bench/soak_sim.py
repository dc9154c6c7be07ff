"""`python -m bench.soak_sim --port P`: `mavera-gateway simulate`, keeping only recent records.

The simulator keeps a `SimRecord` of every request it served, for tests to inspect. Over a soak of
a million requests that list is the simulator's own leak: measured with `mavera-gateway simulate`
behind the gateway, its RSS went from 224 MiB after 23,000 requests to 1,473 MiB after 200,000,
and its CPU per request rose by about half (the garbage collector walking the records), so that
it, not the gateway, set the pace (1,378 falling to 1,014 requests a second). This runs the same
`Simulator` app, in a process of its own, with the uvicorn settings of `app.runner.simulate`, its
record list cut to the last RECENT entries. Nothing the gateway sees changes. Loopback only.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from app.logs import configure_logging
from app.simulator import SimRecord, SimScript, Simulator

RECENT = 1000


class RecentRecords(list[SimRecord]):
    """A list that keeps about the last RECENT records appended (between RECENT and 2 x)."""

    def append(self, record: SimRecord) -> None:
        """Add `record`, dropping the oldest RECENT once twice that many are held."""
        super().append(record)
        if len(self) >= 2 * RECENT:
            del self[:RECENT]


def main() -> None:
    """Serve the simulator on 127.0.0.1 until stopped."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak_sim", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    configure_logging("text")
    sim = Simulator(script=SimScript())
    sim.records = RecentRecords()
    logging.getLogger("bench.soak_sim").info(
        "Mavera simulator (last %d records kept) on http://127.0.0.1:%d/api/v1", RECENT, args.port
    )
    uvicorn.run(sim.app, host="127.0.0.1", port=args.port, access_log=False, log_config=None)


if __name__ == "__main__":
    main()
