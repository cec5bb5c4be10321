-- wrk script for verve's accept endpoint.
--   VERVE_BENCH_IDS       ids are drawn uniformly from [0, this) (default 1e12: nearly all
--                         distinct); 1 sends the same id every time; "unique" sends ids
--                         never sent before (counting up from the start time), so that the
--                         reports must add up to the requests answered ok
--   VERVE_BENCH_ENDPOINT  optional callback endpoint (already percent-encoded)
--   VERVE_BENCH_PIPELINE  requests per write (default 1)
--   VERVE_BENCH_DELAY_MS  pause of each connection between requests, for a fixed offered
--                         load (connections * 1000 / delay requests/s at most)
local unique = os.getenv("VERVE_BENCH_IDS") == "unique"
local ids = unique and 0 or tonumber(os.getenv("VERVE_BENCH_IDS") or "1000000000000")
local endpoint = os.getenv("VERVE_BENCH_ENDPOINT")
local depth = tonumber(os.getenv("VERVE_BENCH_PIPELINE") or "1")
local pause = tonumber(os.getenv("VERVE_BENCH_DELAY_MS") or "0")
local suffix = endpoint and ("&endpoint=" .. endpoint) or ""
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

local next_id = 0

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
  -- 1e8 ids for each thread (up to 10) of a run started in a given second, all below 2^53,
  -- where a Lua number still holds every integer.
  next_id = ((os.time() % 1000000) * 10 + (seed or 0) % 10) * 100000000
end

local function one()
  local id
  if unique then
    next_id = next_id + 1
    id = string.format("%.0f", next_id)
  else
    id = math.random(0, ids - 1)
  end
  return wrk.format("GET", "/api/verve/accept?id=" .. id .. suffix)
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
