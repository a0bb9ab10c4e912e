-- sluice strategy gcra (mirror of src/strategy/gcra.rs); part of the script assembled by
-- src/strategy/lua.rs, called by decide.lua.
-- Rule arguments: p1 = burst (0 means the limit; 1 = strict spacing), p2 unused.
-- State: "gcra <TAT whole ms> <TAT fraction in 1/limit ms>". (TAT - now) x limit is the fluid
-- level; the emission interval period/limit is one unit of cost.
S.gcra = function(raw, now, limit, period, cost, burst)
  local cap = capacity(burst, limit) * period
  local level = 0
  local f = parse(raw, 'gcra', 2)
  if f then
    level = math.max((f[1] - now) * limit + f[2], 0)
  end
  return fluid_step(level, cost, 0, period, limit, cap, 0, function(l)
    local whole = idiv(l, limit)
    return 'gcra ' .. num(now + whole) .. ' ' .. num(l - whole * limit)
  end)
end
