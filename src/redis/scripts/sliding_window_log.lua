-- sluice strategy sliding_window_log (mirror of src/strategy/sliding_window_log.rs); part of
-- the script assembled by src/redis/script.rs, called by decide.lua.
-- Rule arguments: p1 = max_entries (0 means 1), p2 unused.
-- State: "swl <t1 ms> <cost1> <t2 ms> <cost2> ...", oldest first.
-- An entry counts while t + period > now. Entries of the same ms are merged; when the log
-- exceeds max_entries, its two oldest entries merge at the later time (under-admits only).
S.sliding_window_log = function(raw, now, limit, period, cost, max_entries)
  local flat = parse(raw, 'swl', nil)
  if flat and #flat % 2 ~= 0 then
    flat = nil
  end
  if flat then
    for i = 3, #flat, 2 do
      if flat[i] < flat[i - 2] then
        flat = nil
        break
      end
    end
  end
  flat = flat or {}
  local eff = now
  if #flat > 0 then
    eff = max(now, flat[#flat - 1])
  end
  local log, used = {}, 0
  for i = 1, #flat, 2 do
    if flat[i] + period > eff then
      log[#log + 1] = {flat[i], flat[i + 1]}
      used = used + flat[i + 1]
    end
  end
  local remaining = max(limit - used, 0)
  -- Until the oldest entry expires (freeing its cost) and the newest (emptying the log).
  local function expiry(e)
    if e then
      return max(e[1] + period - now, 0)
    end
    return 0
  end
  local reset, ttl = expiry(log[1]), expiry(log[#log])
  if cost == 0 then
    return admit(remaining, reset, 0, nil, ttl)
  end
  if cost > limit then
    return deny(remaining, reset, period, ttl)
  end
  if used + cost <= limit then
    if #log > 0 and log[#log][1] == eff then
      log[#log][2] = log[#log][2] + cost
    else
      log[#log + 1] = {eff, cost}
    end
    -- Over the cap, the oldest entries fold into the first one kept, in one pass (a log
    -- stored under a larger cap costs its length, not its length squared).
    local cap = max(max_entries, 1)
    if #log > cap then
      local over = #log - cap
      local folded = 0
      for i = 1, over + 1 do
        folded = folded + log[i][2]
      end
      local kept = {}
      for i = over + 1, #log do
        kept[#kept + 1] = log[i]
      end
      kept[1][2] = folded
      log = kept
    end
    local parts = {'swl'}
    for _, e in ipairs(log) do
      parts[#parts + 1] = num(e[1])
      parts[#parts + 1] = num(e[2])
    end
    return admit(limit - used - cost, expiry(log[1]), 0, table.concat(parts, ' '), expiry(log[#log]))
  end
  -- Expire the oldest entries until the request fits; the last one to go sets the time.
  local need = used + cost - limit
  local at = eff
  for _, e in ipairs(log) do
    at = e[1] + period
    need = need - e[2]
    if need <= 0 then
      break
    end
  end
  return deny(remaining, reset, at - now, ttl)
end
