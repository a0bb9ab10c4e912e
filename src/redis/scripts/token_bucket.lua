-- sluice strategy token_bucket (mirror of src/strategy/token_bucket.rs); part of the script
-- assembled by src/strategy/lua.rs, called by decide.lua.
-- Rule arguments: p1 = burst (0 means the limit), p2 unused.
-- State: "tb <last update ms> <tokens x period_ms>". Starts full, refills limit per period.
S.token_bucket = function(raw, now, limit, period, cost, burst)
  local cap = capacity(burst, limit) * period
  local last, level = now, 0
  local f = parse(raw, 'tb', 2)
  if f then
    last, level = f[1], cap - math.min(f[2], cap)
  end
  local eff = math.max(now, last)
  level = drain(level, eff - last, limit)
  return fluid_step(level, cost, eff - now, period, limit, cap, 0, function(l)
    return 'tb ' .. num(eff) .. ' ' .. num(cap - math.min(l, cap))
  end)
end
