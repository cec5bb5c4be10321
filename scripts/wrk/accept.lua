-- wrk script for verve's accept endpoint.
--   VERVE_BENCH_IDS       ids are drawn uniformly from [0, this) (default 1e12: nearly all
--                         distinct); 1 sends the same id every time
--   VERVE_BENCH_ENDPOINT  optional callback endpoint (already percent-encoded)
--   VERVE_BENCH_PIPELINE  requests per write (default 1)
--   VERVE_BENCH_DELAY_MS  pause of each connection between requests, for a fixed offered
--                         load (connections * 1000 / delay requests/s at most)
local ids = tonumber(os.getenv("VERVE_BENCH_IDS") or "1000000000000")
local endpoint = os.getenv("VERVE_BENCH_ENDPOINT")
local depth = tonumber(os.getenv("VERVE_BENCH_PIPELINE") or "1")
local pause = tonumber(os.getenv("VERVE_BENCH_DELAY_MS") or "0")
local suffix = endpoint and ("&endpoint=" .. endpoint) or ""
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

local function one()
  return wrk.format("GET", "/api/verve/accept?id=" .. math.random(0, ids - 1) .. suffix)
end

function request()
  if depth == 1 then
    return one()
  end
  local batch = {}
  for i = 1, depth do
    batch[i] = one()
  end
  return table.concat(batch)
end

if pause > 0 then
  function delay()
    return pause
  end
end
