-- sluice strategy token_bucket_debt (mirror of src/strategy/token_bucket_debt.rs); part of the
-- script assembled by src/redis/script.rs, called by decide.lua.
-- Rule arguments: p1 = burst (0 means the limit), p2 = max_debt.
-- State: "tbd <last update ms> <tokens x period_ms>", tokens negative while in debt.
-- Admits while tokens - cost >= -max_debt; remaining counts the debt still available.
S.token_bucket_debt = function(raw, now, limit, period, cost, burst, max_debt)
  local b = capacity(burst, limit)
  local full = b * period
  local cap = (b + max_debt) * period
  local last, level = now, 0
  local t, tokens = parse2(raw, 'tbd', true)
  if t then
    last, level = t, min(max(full - tokens, 0), cap)
  end
  local eff = max(now, last)
  local d = fluid_step(drain(level, eff - last, limit), cost, eff - now, period, limit, cap, 0)
  if d[7] then
    d[7] = 'tbd ' .. num(eff) .. ' ' .. num(full - d[7])
  end
  return d
end
