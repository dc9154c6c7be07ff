-- wrk script: POST the JSON body in $BENCH_BODY_FILE, with $BENCH_TOKEN as a bearer token if set.
-- With $BENCH_MAX_REQUESTS > 0 each thread stops after that many responses (the soak's count
-- bound; wrk's -d stays the time bound).
local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local limit = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0") or 0
if limit > 0 then
  local seen = 0
  function response(status, headers, body)
    seen = seen + 1
    if seen >= limit then
      wrk.thread:stop()
    end
  end
end
