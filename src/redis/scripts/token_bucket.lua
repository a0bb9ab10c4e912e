-- sluice strategy token_bucket (mirror of src/strategy/token_bucket.rs); part of the script
-- assembled by src/redis/script.rs, called by decide.lua.
-- Rule arguments: p1 = burst (0 means the limit), p2 unused.
-- State: "tb <last update ms> <tokens x period_ms>". Starts full, refills limit per period.
S.token_bucket = function(raw, now, limit, period, cost, burst)
  local cap = capacity(burst, limit) * period
  local last, level = now, 0
  local t, tokens = parse2(raw, 'tb')
  if t then
    last, level = t, cap - min(tokens, cap)
  end
  local eff = max(now, last)
  local d = fluid_step(drain(level, eff - last, limit), cost, eff - now, period, limit, cap, 0)
  if d[7] then
    d[7] = 'tb ' .. num(eff) .. ' ' .. num(cap - min(d[7], cap))
  end
  return d
end
