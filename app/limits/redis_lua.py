"""The Lua scripts behind RedisCounters: each counter operation is one script, run atomically.

Redis runs a script to its end before any other command, so reading a counter, deciding and
writing happen as one step for every replica at once. Times come from the Redis server's own
clock (TIME), never from a replica's, so replicas whose clocks differ still count one window.
Numbers go back as strings: Redis turns a Lua number in a reply into an integer.
"""

from __future__ import annotations

# The current time on the Redis server, in seconds with microseconds.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: epoch marker, budget hash (of that epoch). ARGV: epoch, amount, limit, expire-at.
RESERVE = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {'unloaded'} end
if epoch ~= ARGV[1] then return {'epoch', epoch} end
local spent = tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')
local held = tonumber(redis.call('HGET', KEYS[2], 'reserved') or '0')
if spent + held >= tonumber(ARGV[3]) then
  return {'refused', tostring(spent), tostring(held)}
end
held = tonumber(redis.call('HINCRBYFLOAT', KEYS[2], 'reserved', ARGV[2]))
if tonumber(ARGV[4]) > 0 then redis.call('EXPIREAT', KEYS[2], ARGV[4]) end
return {'held', tostring(spent), tostring(held)}
"""

# KEYS: epoch marker, budget hash. ARGV: the reservation's epoch, amount, actual credits.
# A reservation made before the counters were rebuilt changes nothing: the rebuilt figures came
# from the ledger, which has (or will have) the request's real credits.
SETTLE = """
local spent = tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')
local held = tonumber(redis.call('HGET', KEYS[2], 'reserved') or '0')
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 0 then
  return {tostring(spent), tostring(held)}
end
held = math.max(0, held - tonumber(ARGV[2]))
redis.call('HSET', KEYS[2], 'reserved', tostring(held))
spent = redis.call('HINCRBYFLOAT', KEYS[2], 'spent', ARGV[3])
return {spent, tostring(held)}
"""

# KEYS: budget hash. ARGV: spent, expire-at. Only where nobody counts yet.
LOAD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', '0')
if tonumber(ARGV[2]) > 0 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS: epoch marker. ARGV: the epoch this replica knew before an outage it saw. Dropping it
# makes the next reservation anywhere rebuild the budgets from the ledger (which has what was
# served meanwhile); a replica that comes back later finds a newer epoch and drops nothing.
DROP_EPOCH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

# The sliding window of one key: drop hits older than the window, then count this one (ARGV[3],
# a unique member; '' only looks) if fewer than the limit are in it.
_WINDOW = """
local function window(key, limit, span, member, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
  local n = redis.call('ZCARD', key)
  local allowed = n < limit
  if allowed and member ~= '' then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, math.ceil(span * 1000) + 1000)
    n = n + 1
  end
  local retry, reset = 0, 0
  if n >= limit then
    retry = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) + span - now
  end
  if n > 0 then
    reset = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]) + span - now
  end
  return {allowed and 1 or 0, tostring(limit - n), tostring(retry), tostring(reset)}
end
"""

# KEYS: window. ARGV: limit, window seconds, member ('' to peek).
WINDOW = (
    _NOW
    + _WINDOW
    + """
return window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], now)
"""
)

# KEYS: slots (token -> lapses at), token counter. ARGV: limit, ttl seconds.
ACQUIRE_SLOT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), token)
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
return token
"""
)

# KEYS: the slots sets, one per slot. ARGV: ttl seconds, then each slot's token.
REFRESH_SLOTS = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + ttl, ARGV[i + 1]) == 1 then
    redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
  end
end
return 0
"""
)

# KEYS: slots. How many are held now.
SLOTS_HELD = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)

# The shared fair queue: waiters (id -> ticket), their heartbeat deadlines (id -> lapses at),
# and the queue's virtual time. Waiters whose replica stopped refreshing them are dropped.
_PURGE = """
local function purge(waiters, deadlines, now)
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', deadlines, '-inf', now)) do
    redis.call('ZREM', waiters, w)
    redis.call('ZREM', deadlines, w)
  end
end
"""

# KEYS: waiters, deadlines, virtual time, the client's last ticket, window.
# ARGV: limit, window seconds, hit member, waiter id, weight, waiter ttl s, ticket ttl ms.
# Nobody waiting and room in the window: admitted at once. Otherwise queued with a ticket: the
# client's previous ticket plus 1/weight, never behind the queue's virtual time.
FQ_ENTER = (
    _NOW
    + _WINDOW
    + _PURGE
    + """
purge(KEYS[1], KEYS[2], now)
if redis.call('ZCARD', KEYS[1]) == 0 then
  local verdict = window(KEYS[5], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], now)
  if verdict[1] == 1 then return {'admitted'} end
end
local vt = tonumber(redis.call('GET', KEYS[3]) or '0')
local ticket = math.max(vt, tonumber(redis.call('GET', KEYS[4]) or '0'))
redis.call('SET', KEYS[4], tostring(ticket + 1 / tonumber(ARGV[5])), 'PX', ARGV[7])
redis.call('ZADD', KEYS[1], ticket, ARGV[4])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[4])
return {'queued'}
"""
)

# KEYS: waiters, deadlines, virtual time, window. ARGV: limit, window s, hit member, waiter
# id, waiter ttl s. Refreshes the waiter's heartbeat; admits it if it holds the lowest ticket
# and the window has room, advancing the virtual time to its ticket.
FQ_TRY = (
    _NOW
    + _WINDOW
    + _PURGE
    + """
purge(KEYS[1], KEYS[2], now)
local ticket = redis.call('ZSCORE', KEYS[1], ARGV[4])
if not ticket then return {'gone', '0'} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
if redis.call('ZRANGE', KEYS[1], 0, 0)[1] ~= ARGV[4] then return {'behind', '0'} end
local verdict = window(KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], now)
if verdict[1] == 0 then return {'full', verdict[3]} end
redis.call('ZREM', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[4])
if tonumber(ticket) > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], ticket)
end
return {'admitted', '0'}
"""
)

# KEYS: waiters, deadlines. ARGV: waiter id. A waiter that gave up.
FQ_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
"""

SCRIPTS = {
    "reserve": RESERVE,
    "settle": SETTLE,
    "load": LOAD,
    "drop_epoch": DROP_EPOCH,
    "window": WINDOW,
    "acquire_slot": ACQUIRE_SLOT,
    "refresh_slots": REFRESH_SLOTS,
    "slots_held": SLOTS_HELD,
    "fq_enter": FQ_ENTER,
    "fq_try": FQ_TRY,
    "fq_leave": FQ_LEAVE,
}
