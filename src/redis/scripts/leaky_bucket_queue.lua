-- sluice strategy leaky_bucket_queue (mirror of src/strategy/leaky_bucket_queue.rs); part of
-- the script assembled by src/strategy/lua.rs, called by decide.lua.
-- Rule arguments: p1 = burst, the capacity (0 means the limit), p2 = max_delay_ms.
-- State: "lbq <last update ms> <level x period_ms>"; a queued request's cost is in the level
-- already, so the level may exceed the capacity by up to max_delay_ms x limit.
-- An overflowing request is admitted with delay_ms = time until it fits, if <= max_delay_ms.
S.leaky_bucket_queue = function(raw, now, limit, period, cost, burst, max_delay)
  local cap = capacity(burst, limit) * period
  local last, level = now, 0
  local f = parse(raw, 'lbq', 2)
  if f then
    last, level = f[1], f[2]
  end
  local eff = math.max(now, last)
  level = drain(level, eff - last, limit)
  return fluid_step(level, cost, eff - now, period, limit, cap, max_delay * limit, function(l)
    return 'lbq ' .. num(eff) .. ' ' .. num(l)
  end)
end
