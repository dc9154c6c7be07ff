"""`python -m bench.soak_sim --port P`: `mavera-gateway simulate`, keeping only recent records.

The simulator keeps a `SimRecord` per request for tests to inspect. Unbounded, over a soak of a
million requests that list was the simulator's own leak: behind the gateway, its RSS went from
224 MiB after 23,000 requests to 1,473 MiB after 200,000, and its CPU per request rose by about
half (the garbage collector walking the records), so that it, not the gateway, set the pace
(1,378 falling to 1,014 requests a second). `mavera-gateway simulate` now keeps about its last
10,000; this runs the same `Simulator` app with the uvicorn settings of `app.runner.simulate`,
keeping the last RECENT, so that the simulator's work stays the same from start to end.
Nothing the gateway sees changes. Loopback only.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from app.logs import configure_logging
from app.simulator import SimScript, Simulator

RECENT = 1000


def main() -> None:
    """Serve the simulator on 127.0.0.1 until stopped."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak_sim", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    configure_logging("text")
    sim = Simulator(script=SimScript(), max_records=RECENT)
    logging.getLogger("bench.soak_sim").info(
        "Mavera simulator (last %d records kept) on http://127.0.0.1:%d/api/v1", RECENT, args.port
    )
    uvicorn.run(sim.app, host="127.0.0.1", port=args.port, access_log=False, log_config=None)


if __name__ == "__main__":
    main()
