-- sluice strategy leaky_bucket (mirror of src/strategy/leaky_bucket.rs); part of the script
-- assembled by src/strategy/lua.rs, called by decide.lua.
-- Rule arguments: p1 = burst, the capacity (0 means the limit), p2 unused.
-- State: "lb <last update ms> <level x period_ms>". Drains limit per period.
S.leaky_bucket = function(raw, now, limit, period, cost, burst)
  local cap = capacity(burst, limit) * period
  local last, level = now, 0
  local f = parse(raw, 'lb', 2)
  if f then
    last, level = f[1], f[2]
  end
  local eff = math.max(now, last)
  level = drain(level, eff - last, limit)
  return fluid_step(level, cost, eff - now, period, limit, cap, 0, function(l)
    return 'lb ' .. num(eff) .. ' ' .. num(l)
  end)
end
