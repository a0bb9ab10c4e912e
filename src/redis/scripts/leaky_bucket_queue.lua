-- sluice strategy leaky_bucket_queue (mirror of src/strategy/leaky_bucket_queue.rs); part of
-- the script assembled by src/redis/script.rs, called by decide.lua.
-- Rule arguments: p1 = burst, the capacity (0 means the limit), p2 = max_delay_ms.
-- State: "lbq <last update ms> <level x period_ms>"; a queued request's cost is in the level
-- already, so the level may exceed the capacity by up to max_delay_ms x limit.
-- An overflowing request is admitted with delay_ms = time until it fits, if <= max_delay_ms.
S.leaky_bucket_queue = function(raw, now, limit, period, cost, burst, max_delay)
  local cap = capacity(burst, limit) * period
  local last, level = now, 0
  local t, l = parse2(raw, 'lbq')
  if t then
    last, level = t, l
  end
  local eff = max(now, last)
  local d = fluid_step(drain(level, eff - last, limit), cost, eff - now, period, limit, cap, max_delay * limit)
  if d[7] then
    d[7] = 'lbq ' .. num(eff) .. ' ' .. num(d[7])
  end
  return d
end
