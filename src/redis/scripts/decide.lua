-- sluice: decide Redis rules, all-or-nothing per call. The end of the script and the library
-- assembled by src/redis/script.rs (common.lua and the eight strategy files come first); the
-- entry points, `one` and `batch`, are called from there.
--
-- ONE CALL (EVALSHA of the script, or FCALL sluice_decide_<id>): one rule of one request.
-- KEYS[i]   state key of limit i (one key per limit; all in one cluster slot).
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
--           retry_after_ms, delay_ms, ttl_ms} for limit i as if it were alone (1/0 for
--           allowed; ttl_ms = how long its state lives). When all_allowed is 0 nothing was
--           written, so a limit whose di says allowed was not charged.
-- Writes   only when every limit admits (and not "dry"): SET key state PX ttl_ms for each
--           limit that changed.
--           A key given twice sees the first limit's update when the second is decided.
-- Errors   a wrong argument count, a non-integer number or an unknown strategy.
--
-- A BATCH (FCALL sluice_batch_<id>; sluice-gateway sends one per Redis round trip): several
-- calls in one, decided in order exactly as if they were sent one after another, each
-- all-or-nothing on its own. What it saves Redis is per call: command dispatch, the Lua
-- entry, TIME (one serves the batch) and a GET of a key an earlier call already read.
-- KEYS      every call's keys, call after call (one cluster slot on a Cluster).
-- ARGV      c, then n_1 m_1 ... n_c m_c (call j's key and argument counts), then every
--           call's arguments, call after call, each laid out as for one call.
-- Reply    {r_1, ..., r_c}: r_j is call j's reply as above, or its error (a key holding
--           another type is an error of the calls that name it, as for one call).
-- Errors   a layout that does not add up is an error of the whole batch, and nothing runs.
local clock_override_allowed = false

local function int_arg(v)
  v = tonumber(v)
  if v == nil or v < 0 or v >= EXACT or v ~= floor(v) then
    return nil
  end
  return v
end

-- Redis TIME in epoch µs, read at most once per script call: `clock.us` caches it.
local function now_us_of(clock)
  if clock.us == nil then
    local t = redis.call('TIME')
    clock.us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return clock.us
end

-- One call: keys KEYS[k0 + 1 .. k0 + n], arguments ARGV[a0 + 1 .. a0 + m]. `states` maps a
-- key to its state as this script call has left it (false: none), so that each key is read
-- from Redis once however many calls of a batch name it.
local function decide(KEYS, ARGV, k0, n, a0, m, clock, states)
  if m < 6 * n or m > 6 * n + 2 then
    return redis.error_reply('ERR sluice: expected 6 arguments per key (plus optional "dry" and now_us), got '
      .. m .. ' for ' .. n .. ' keys')
  end
  local override = nil
  local dry = false
  for i = a0 + 6 * n + 1, a0 + m do
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
    now_us = now_us_of(clock)
  end
  local now = floor(now_us / 1000)

  local results, pending, all = {}, {}, 1
  for i = 1, n do
    local key = KEYS[k0 + i]
    local base = a0 + (i - 1) * 6
    local name = ARGV[base + 1]
    local fn = S[name]
    if fn == nil then
      return redis.error_reply('ERR sluice: unknown strategy ' .. tostring(name) .. ' for key ' .. i)
    end
    local limit, period, cost = int_arg(ARGV[base + 2]), int_arg(ARGV[base + 3]), int_arg(ARGV[base + 4])
    local p1, p2 = int_arg(ARGV[base + 5]), int_arg(ARGV[base + 6])
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
      local raw = pending[key]
      if raw == nil then
        raw = states[key]
        if raw == nil then
          raw = redis.call('GET', key)
          states[key] = raw
        end
      end
      d = fn(raw, now, limit, period, cost, p1, p2)
    end
    if d[1] == 0 then
      all = 0
    end
    if d[7] ~= nil then
      pending[key] = d[7]
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
        redis.call('SET', KEYS[k0 + i], d[7], 'PX', num(max(d[6], 1) + pad))
        states[KEYS[k0 + i]] = d[7]
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
end

local function one(KEYS, ARGV)
  bind()
  return decide(KEYS, ARGV, 0, #KEYS, 0, #ARGV, {}, {})
end

local function batch(KEYS, ARGV)
  bind()
  local c = int_arg(ARGV[1])
  if c == nil or c < 1 or #ARGV < 1 + 2 * c then
    return redis.error_reply('ERR sluice: a batch starts with its call count and two counts per call')
  end
  local keys, args = 0, 1 + 2 * c
  for j = 1, c do
    local n, m = int_arg(ARGV[2 * j]), int_arg(ARGV[2 * j + 1])
    if n == nil or m == nil or n < 1 then
      return redis.error_reply('ERR sluice: call ' .. j .. ' of the batch has no keys or bad counts')
    end
    keys, args = keys + n, args + m
  end
  if keys ~= #KEYS or args ~= #ARGV then
    return redis.error_reply('ERR sluice: the batch names ' .. keys .. ' keys and ' .. args
      .. ' arguments; it has ' .. #KEYS .. ' and ' .. #ARGV)
  end
  local clock, states, out = {}, {}, {}
  local k0, a0 = 0, 1 + 2 * c
  for j = 1, c do
    local n, m = int_arg(ARGV[2 * j]), int_arg(ARGV[2 * j + 1])
    -- An error raised in one call (a key of another type) is that call's alone, as it would
    -- be were it its own FCALL: a call raises before it writes anything.
    local ok, r = pcall(decide, KEYS, ARGV, k0, n, a0, m, clock, states)
    if ok or type(r) == 'table' then
      out[j] = r
    else
      out[j] = redis.error_reply(tostring(r))
    end
    k0, a0 = k0 + n, a0 + m
  end
  return out
end
