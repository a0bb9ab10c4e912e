-- sluice strategy sliding_window_counter (mirror of src/strategy/sliding_window_counter.rs);
-- part of the script assembled by src/strategy/lua.rs, called by decide.lua.
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

S.sliding_window_counter = function(raw, now, limit, period, cost)
  local stored, cur, prev = now - now % period, 0, 0
  local f = parse(raw, 'swc', 3)
  if f then
    stored, cur, prev = f[1], f[2], f[3]
  end
  local eff = math.max(now, stored)
  local start = eff - eff % period
  if start == stored then
    -- same window
  elseif start == stored + period then
    cur, prev = 0, cur
  else
    cur, prev = 0, 0
  end
  local weight = period - (eff - start)
  local function used(c)
    return prev * weight + c * period
  end
  local function remaining(c)
    local room = limit * period - used(c)
    if room <= 0 then
      return 0
    end
    return idiv(room, period)
  end
  local function until_empty(c)
    if c > 0 then
      return start + 2 * period - now
    elseif prev > 0 then
      return start + period - now
    end
    return 0
  end
  local reset = until_empty(cur)
  if cost == 0 then
    return admit(remaining(cur), reset, 0, nil, reset)
  end
  if cost > limit then
    return deny(remaining(cur), reset, period, reset)
  end
  local at
  if cur + cost <= limit then
    local after = cur + cost
    if used(after) <= limit * period then
      local r = until_empty(after)
      return admit(remaining(after), r, 0, 'swc ' .. num(start) .. ' ' .. num(after) .. ' ' .. num(prev), r)
    end
    at = start + swc_first_fit(period, limit, prev, cur, cost)
  else
    at = start + period + swc_first_fit(period, limit, cur, 0, cost)
  end
  return deny(remaining(cur), reset, at - now, reset)
end
