"""Budgets and rate limits behind one counter interface: in this process, or in Redis.

- `counters`: the Counters protocol (atomic reserve/settle, sliding windows, slots) and
  MemoryCounters, its in-process implementation.
- `redis_counters`, `redis_lua`, `redis_queue`: RedisCounters, shared by every replica (one Lua
  script per operation), and the gateway_rpm fair queue shared through Redis; imported only
  when `[limits] redis_url` is set (the `[redis]` extra).
- `periods`: calendar budget periods in the configured time zone.
- `admission`: Limits, which admits or refuses each request and settles what it held;
  `holds`: what an admitted request holds; `refusals`: the errors a refused one gets.
- `queue`: FairQueue, the gateway-wide rate shared by weighted round robin across clients.
- `spend`: the spend report, ledger seeding and rate-limit headers without counting.
"""

from app.limits.admission import Limits
from app.limits.counters import Counters, MemoryCounters
from app.limits.holds import Admission
from app.limits.periods import period_end, period_start

__all__ = ["Admission", "Counters", "Limits", "MemoryCounters", "period_end", "period_start"]
