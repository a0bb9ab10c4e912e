-- sluice strategy fixed_window (mirror of src/strategy/fixed_window.rs); part of the script
-- assembled by src/redis/script.rs, called by decide.lua.
-- Rule arguments: p1, p2 unused (pass 0).
-- State: "fw <window start ms> <admitted cost in that window>".
-- Windows are aligned to the epoch; a stored window later than now's (the clock stepped back)
-- keeps counting until it ends.
S.fixed_window = function(raw, now, limit, period, cost)
  local now_window = now - now % period
  local start, count = now_window, 0
  local w, c = parse2(raw, 'fw')
  if w and w >= now_window then
    start, count = w, c
  end
  local reset = start + period - now
  local remaining = max(limit - count, 0)
  local lived = 0
  if count > 0 then
    lived = reset
  end
  if cost == 0 then
    return admit(remaining, lived, 0, nil, lived)
  end
  if cost > limit then
    return deny(remaining, lived, period, lived)
  end
  if count + cost <= limit then
    return admit(limit - count - cost, reset, 0, 'fw ' .. num(start) .. ' ' .. num(count + cost), reset)
  end
  return deny(remaining, reset, reset, lived)
end
