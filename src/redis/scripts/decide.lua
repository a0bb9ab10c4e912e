-- sluice: decide every Redis rule of one request, all-or-nothing, in one script call.
-- (The end of the script assembled by src/redis/script.rs: common.lua and the eight strategy
-- files come first.)
--
-- KEYS[i]   state key of rule i (one key per rule and limit; all in one cluster slot).
-- ARGV      6 arguments per key, in KEYS order:
--             strategy   fixed_window | sliding_window_counter | sliding_window_log |
--                        token_bucket | token_bucket_debt | leaky_bucket |
--                        leaky_bucket_queue | gcra
--             limit      the rate's limit (integer)
--             period_ms  the rate's period in ms
--             cost       this request's cost, at least 1
--             p1, p2     strategy parameters, see each strategy's file (0 when unused)
--           then optionally, in any order:
--             "dry"      decide but write nothing (the filter's first pass over several
--                        rules that live in different cluster slots: it writes only when
--                        every rule admits, so a denied request consumes nothing)
--             now_us     ONLY in the test build of this script (src/redis/script.rs,
--                        feature `testing`), a clock override in epoch microseconds. The
--                        script Redis runs in production refuses it: its clock is Redis TIME,
--                        so every proxy shares one clock per key. With an override, keys are
--                        written with 60 s of real time added to their expiry, since the
--                        simulated clock is not the one Redis expires keys by.
-- Reply    {all_allowed, d1, d2, ...}, with di = {allowed, remaining, reset_ms,
--           retry_after_ms, delay_ms, ttl_ms} for rule i as if it were alone (1/0 for
--           allowed; ttl_ms = how long its state lives). When all_allowed is 0 nothing was
--           written, so a rule whose di says allowed was not charged.
-- Writes   only when every rule admits (and not "dry"): SET key state PX ttl_ms for each rule
--           that changed.
--           A key given twice sees the first rule's update when the second is decided.
-- Errors   a wrong argument count, a non-integer number or an unknown strategy.
bind()
local clock_override_allowed = false
local n = #KEYS
local override = nil
local dry = false
if #ARGV < 6 * n or #ARGV > 6 * n + 2 then
  return redis.error_reply('ERR sluice: expected 6 arguments per key (plus optional "dry" and now_us), got '
    .. #ARGV .. ' for ' .. n .. ' keys')
end
for i = 6 * n + 1, #ARGV do
  if ARGV[i] == 'dry' and not dry then
    dry = true
  elseif clock_override_allowed and override == nil and tonumber(ARGV[i]) ~= nil then
    override = tonumber(ARGV[i])
  else
    return redis.error_reply('ERR sluice: unexpected option ' .. tostring(ARGV[i])
      .. '; expected "dry"')
  end
end

local now_us = override
if now_us == nil then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now = floor(now_us / 1000)

local function int_arg(i)
  local v = tonumber(ARGV[i])
  if v == nil or v < 0 or v >= EXACT or v ~= floor(v) then
    return nil
  end
  return v
end

local results, pending, all = {}, {}, 1
for i = 1, n do
  local base = (i - 1) * 6
  local name = ARGV[base + 1]
  local fn = S[name]
  if fn == nil then
    return redis.error_reply('ERR sluice: unknown strategy ' .. tostring(name) .. ' for key ' .. i)
  end
  local limit, period, cost = int_arg(base + 2), int_arg(base + 3), int_arg(base + 4)
  local p1, p2 = int_arg(base + 5), int_arg(base + 6)
  if limit == nil or period == nil or cost == nil or p1 == nil or p2 == nil then
    return redis.error_reply('ERR sluice: arguments of key ' .. i .. ' must be non-negative integers')
  end
  if cost < 1 then
    -- A cost of 0 is the strategies' peek (admit without counting): never a request's cost.
    return redis.error_reply('ERR sluice: cost of key ' .. i .. ' must be at least 1')
  end
  local d
  if limit == 0 or period == 0 then
    -- Invalid (or unlimited) rate: the config compiler never sends one; admit, store nothing.
    d = {1, limit, 0, 0, 0, 0, nil}
  else
    local raw = pending[KEYS[i]]
    if raw == nil then
      raw = redis.call('GET', KEYS[i])
    end
    d = fn(raw, now, limit, period, cost, p1, p2)
  end
  if d[1] == 0 then
    all = 0
  end
  if d[7] ~= nil then
    pending[KEYS[i]] = d[7]
  end
  results[i] = d
end

if all == 1 and not dry then
  local pad = 0
  if override ~= nil then
    pad = 60000
  end
  for i = 1, n do
    local d = results[i]
    if d[7] ~= nil then
      redis.call('SET', KEYS[i], d[7], 'PX', num(max(d[6], 1) + pad))
    end
  end
end

-- Each decision is its own reply once its state is dropped (a Lua table ends at its first nil).
local reply = {all}
for i = 1, n do
  local d = results[i]
  d[7] = nil
  reply[i + 1] = d
end
return reply
