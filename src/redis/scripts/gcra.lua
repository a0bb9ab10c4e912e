-- sluice strategy gcra (mirror of src/strategy/gcra.rs); part of the script assembled by
-- src/redis/script.rs, called by decide.lua.
-- Rule arguments: p1 = burst (0 means the limit; 1 = strict spacing), p2 unused.
-- State: "gcra <TAT whole ms> <TAT fraction in 1/limit ms>". (TAT - now) x limit is the fluid
-- level; the emission interval period/limit is one unit of cost.
S.gcra = function(raw, now, limit, period, cost, burst)
  local cap = capacity(burst, limit) * period
  local level = 0
  local tat, frac = parse2(raw, 'gcra')
  if tat then
    level = max((tat - now) * limit + frac, 0)
  end
  local d = fluid_step(level, cost, 0, period, limit, cap, 0)
  if d[7] then
    local whole = idiv(d[7], limit)
    d[7] = 'gcra ' .. num(now + whole) .. ' ' .. num(d[7] - whole * limit)
  end
  return d
end
