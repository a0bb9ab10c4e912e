-- sluice: decide Redis rules, all-or-nothing per call. The end of the script and the library
-- assembled by src/redis/script.rs (common.lua and the eight strategy files come first; the
-- library adds batch.lua): `one` is the entry point of a call.
--
-- One call (EVALSHA of the script, or FCALL sluice_decide_<id>): one rule of one request.
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
-- Writes   only when every limit admits (and not "dry"): SET key state PX ttl_ms + 1000 for
--           each limit that changed, when the script call ends (Redis runs it atomically, so no one
--           sees the difference).
--           A key given twice sees the first limit's update when the second is decided.
-- Errors   a wrong argument count, a non-integer number or an unknown strategy.
--
-- The library's batch function (batch.lua) runs `decide` for several calls in one script call.
local clock_override_allowed = false

local function int_arg(v)
  v = tonumber(v)
  if v == nil or v < 0 or v >= EXACT or v ~= floor(v) then
    return nil
  end
  return v
end

-- What one script call has seen and will write: Redis TIME in epoch µs once read (`us`), each
-- key's state as the calls so far left it (`states`, false: none), and the keys to write
-- (`order`, first write first) with the lifetime of their last write (`ttls`).
local function script_call()
  return {us = nil, states = {}, ttls = {}, order = {}}
end

local function now_us_of(ctx)
  if ctx.us == nil then
    local t = redis.call('TIME')
    ctx.us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return ctx.us
end

-- Writes what the script call decided: each key once, with its last state.
local function flush(ctx)
  for i = 1, #ctx.order do
    local key = ctx.order[i]
    redis.call('SET', key, ctx.states[key], 'PX', num(ctx.ttls[key]))
  end
end

-- One call: keys KEYS[k0 + 1 .. k0 + n], arguments ARGV[a0 + 1 .. a0 + m], in script call
-- `ctx`. Reads a key from Redis only the first time the script call names it.
local function decide(KEYS, ARGV, k0, n, a0, m, ctx)
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
    now_us = now_us_of(ctx)
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
        raw = ctx.states[key]
        if raw == nil then
          raw = redis.call('GET', key)
          ctx.states[key] = raw
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
    -- Keys outlive their state by 1 s (native.rs' TTL_PAD_MS): a key that moves to a node whose
    -- clock is behind (a Cluster slot migrated, a failover replicating a relative expiry) must
    -- not expire while its state still decides there.
    local pad = 1000
    if override ~= nil then
      pad = 60000
    end
    for i = 1, n do
      local d = results[i]
      if d[7] ~= nil then
        local key = KEYS[k0 + i]
        if ctx.ttls[key] == nil then
          ctx.order[#ctx.order + 1] = key
        end
        ctx.states[key] = d[7]
        ctx.ttls[key] = max(d[6], 1) + pad
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

-- As many keys as one rule has limits: a call naming thousands would hold Redis for as long.
local function one(KEYS, ARGV)
  if #KEYS > 8 then
    return redis.error_reply('ERR sluice: a call names ' .. #KEYS
      .. " keys; at most 8 (one rule's limits, or what the gateway runs at once)")
  end
  bind()
  local ctx = script_call()
  local reply = decide(KEYS, ARGV, 0, #KEYS, 0, #ARGV, ctx)
  flush(ctx)
  return reply
end
