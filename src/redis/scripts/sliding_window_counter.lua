-- sluice strategy sliding_window_counter (mirror of src/strategy/sliding_window_counter.rs);
-- part of the script assembled by src/redis/script.rs, called by decide.lua.
-- Rule arguments: p1, p2 unused (pass 0).
-- State: "swc <current window start ms> <current count> <previous count>".
-- Admits if prev x (period - elapsed) + (cur + cost) x period <= limit x period.

-- First elapsed ms into a window (with `prev` weighted, `cur` current) at which `cost` fits,
-- given cur + cost <= limit; at most `period`.
local function swc_first_fit(period, limit, prev, cur, cost)
  if prev == 0 then
    return 0
  end
  local k = idiv((limit - cur - cost) * period, prev)
  if k > period then
    k = period
  end
  return period - k
end

-- Whole requests still admissible with `c` in the current window and `weighted` (previous
-- count x its remaining weight) from the last.
local function swc_remaining(limit, period, weighted, c)
  local room = limit * period - weighted - c * period
  if room <= 0 then
    return 0
  end
  return idiv(room, period)
end

-- How long until a window holding `c` (and `prev` before it) has emptied, from `now`.
local function swc_until_empty(start, period, now, prev, c)
  if c > 0 then
    return start + 2 * period - now
  elseif prev > 0 then
    return start + period - now
  end
  return 0
end

-- When `cost` (at most the limit) fits on `c`: later in this window once the previous window's
-- weight has shrunk enough, or in the next, where `c` becomes the weighted count.
local function swc_fits_at(start, period, limit, prev, c, cost)
  if c + cost <= limit then
    return start + swc_first_fit(period, limit, prev, c, cost)
  end
  return start + period + swc_first_fit(period, limit, c, 0, cost)
end

-- How long until one more than the remaining fits, from `now`; 0 when nothing is counted.
local function swc_next(start, period, now, limit, weighted, prev, c)
  if weighted + c * period == 0 then
    return 0
  end
  local at = swc_fits_at(start, period, limit, prev, c, swc_remaining(limit, period, weighted, c) + 1)
  return max(at - now, 0)
end

local swc_state = '^swc (%d+) (%d+) (%d+)$'

S.sliding_window_counter = function(raw, now, limit, period, cost)
  local stored, cur, prev = now - now % period, 0, 0
  if type(raw) == 'string' and #raw <= MAX_STATE_BYTES then
    local a, b, c = match(raw, swc_state)
    a, b, c = tonumber(a), tonumber(b), tonumber(c)
    if a and a < EXACT and b < EXACT and c < EXACT then
      stored, cur, prev = a, b, c
    end
  end
  local eff = max(now, stored)
  local start = eff - eff % period
  if start == stored then
    -- same window
  elseif start == stored + period then
    cur, prev = 0, cur
  else
    cur, prev = 0, 0
  end
  local weighted = prev * (period - (eff - start))
  local reset = swc_next(start, period, now, limit, weighted, prev, cur)
  local ttl = swc_until_empty(start, period, now, prev, cur)
  if cost == 0 then
    return admit(swc_remaining(limit, period, weighted, cur), reset, 0, nil, ttl)
  end
  if cost > limit then
    return deny(swc_remaining(limit, period, weighted, cur), reset, period, ttl)
  end
  if cur + cost <= limit then
    local after = cur + cost
    if weighted + after * period <= limit * period then
      return admit(swc_remaining(limit, period, weighted, after), swc_next(start, period, now, limit, weighted, prev, after),
        0, 'swc ' .. num(start) .. ' ' .. num(after) .. ' ' .. num(prev), swc_until_empty(start, period, now, prev, after))
    end
  end
  return deny(swc_remaining(limit, period, weighted, cur), reset, swc_fits_at(start, period, limit, prev, cur, cost) - now,
    ttl)
end
