-- sluice strategy leaky_bucket (mirror of src/strategy/leaky_bucket.rs); part of the script
-- assembled by src/redis/script.rs, called by decide.lua.
-- Rule arguments: p1 = burst, the capacity (0 means the limit), p2 unused.
-- State: "lb <last update ms> <level x period_ms>". Drains limit per period.
S.leaky_bucket = function(raw, now, limit, period, cost, burst)
  local cap = capacity(burst, limit) * period
  local last, level = now, 0
  local t, l = parse2(raw, 'lb')
  if t then
    last, level = t, l
  end
  local eff = max(now, last)
  local d = fluid_step(drain(level, eff - last, limit), cost, eff - now, period, limit, cap, 0)
  if d[7] then
    d[7] = 'lb ' .. num(eff) .. ' ' .. num(d[7])
  end
  return d
end
