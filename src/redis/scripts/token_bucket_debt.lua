-- sluice strategy token_bucket_debt (mirror of src/strategy/token_bucket_debt.rs); part of the
-- script assembled by src/strategy/lua.rs, called by decide.lua.
-- Rule arguments: p1 = burst (0 means the limit), p2 = max_debt.
-- State: "tbd <last update ms> <tokens x period_ms>", tokens negative while in debt.
-- Admits while tokens - cost >= -max_debt; remaining counts the debt still available.
S.token_bucket_debt = function(raw, now, limit, period, cost, burst, max_debt)
  local b = capacity(burst, limit)
  local full = b * period
  local cap = (b + max_debt) * period
  local last, level = now, 0
  local f = parse(raw, 'tbd', 2, true)
  if f then
    last, level = f[1], math.min(math.max(full - f[2], 0), cap)
  end
  local eff = math.max(now, last)
  level = drain(level, eff - last, limit)
  return fluid_step(level, cost, eff - now, period, limit, cap, 0, function(l)
    return 'tbd ' .. num(eff) .. ' ' .. num(full - l)
  end)
end
