-- sluice decision script, shared part. Not a script on its own: src/redis/script.rs joins
-- common.lua, the eight strategy files and decide.lua (in that order) into ONE script, so that
-- a single EVALSHA decides every rule of a request, all-or-nothing. decide.lua documents the
-- KEYS/ARGV contract and the reply.
--
-- Every name is local: Redis forbids scripts to create globals. The same text is also loaded
-- once as a Redis 7 function library (src/redis/script.rs, `library()`): then everything here is
-- defined once, and only decide.lua's body runs per call. As a script, Redis runs the whole text
-- on every call, so no closure is made per decision (each one is an allocation to collect).
--
-- Arithmetic: the strategies mirror src/strategy/*.rs exactly. Lua numbers are doubles, which
-- hold every integer below 2^53 exactly; the Rust side was written so that realistic rules
-- (epoch ms ~1.7e12, limits up to 1e6, periods up to days: capacity x period <= ~1e14) keep
-- every intermediate value below that, and floor(a / b) is then the exact quotient.
-- Library functions in locals, bound by decide.lua on each call: a function library's loading
-- code may not read Redis' globals (math, string, ...), only the functions it registers may.
local floor, max, min, format, match, gmatch, find, tonumber, type
local function bind()
  floor, max, min, format = math.floor, math.max, math.min, string.format
  match, gmatch, find, tonumber, type = string.match, string.gmatch, string.find, _G.tonumber, _G.type
end
-- 2^53: integers from here on are no longer exact doubles; no state holds one.
local EXACT = 9007199254740992
-- A longer state, or one of more numbers, is none the scripts write (anyone may write a key):
-- reading it would cost memory and time out of all proportion (src/redis/state.rs).
local MAX_STATE_BYTES = 139234
local MAX_STATE_NUMBERS = 8190

-- Strategy name -> function(raw_state, now_ms, limit, period_ms, cost, p1, p2) returning a
-- decision: {allowed (1/0), remaining, reset_ms, retry_after_ms, delay_ms, ttl_ms, new_state}.
local S = {}

local function idiv(a, b)
  return floor(a / b)
end

-- ceil(a / b) for a >= 0, b > 0, without forming a + b - 1.
local function cdiv(a, b)
  local q = floor(a / b)
  if q * b < a then
    q = q + 1
  end
  return q
end

-- Integer to decimal text. tostring() would switch to exponent notation above 1e14; '%d'
-- converts to a C integer first (exact below 2^53, which every value here is), so it skips the
-- floating-point printing that '%.0f' pays for (about 0.8 µs of a decision's Redis time).
local function num(x)
  return format('%d', x)
end

-- The two numbers of a state "tag n1 n2" as written by num(), or nil when the state is missing
-- or is not exactly that (another strategy's tag, another count, not decimal digits, a negative
-- time, a negative second number unless `signed`): such a state is treated as never seen, like
-- the Rust side does.
local function parse2(raw, tag, signed)
  if type(raw) ~= 'string' or #raw > MAX_STATE_BYTES then
    return nil
  end
  local t, a, b = match(raw, '^(%l+) (%-?%d+) (%-?%d+)$')
  if t ~= tag then
    return nil
  end
  a, b = tonumber(a), tonumber(b)
  if a < 0 or a >= EXACT or b >= EXACT or b <= -EXACT or (not signed and b < 0) then
    return nil
  end
  return a, b
end

-- The numbers of a state "tag n1 n2 ..." of any length (`count` when given), or nil, as parse2.
local function parse(raw, tag, count)
  if type(raw) ~= 'string' or #raw > MAX_STATE_BYTES or match(raw, '^(%l+) [ %d]*%d$') ~= tag
      or find(raw, '  ', 1, true) then
    return nil
  end
  local out = {}
  for tok in gmatch(raw, '%d+') do
    local v = tonumber(tok)
    if v >= EXACT or #out == MAX_STATE_NUMBERS then
      return nil
    end
    out[#out + 1] = v
  end
  if count ~= nil and #out ~= count then
    return nil
  end
  return out
end

-- `burst` with its default: 0 means the limit.
local function capacity(burst, limit)
  if burst > 0 then
    return burst
  end
  return limit
end

local function admit(remaining, reset, delay, state, ttl)
  return {1, remaining, reset, 0, delay, ttl, state}
end

local function deny(remaining, reset, retry, ttl)
  return {0, remaining, reset, retry, 0, ttl, nil}
end

-- The fluid level shared by token_bucket, token_bucket_debt, leaky_bucket, leaky_bucket_queue
-- and gcra (src/strategy/fluid.rs): a level in cost x period_ms units, draining `limit` per ms.
-- The comparison comes first so that elapsed x limit is only formed below level + limit.
local function drain(level, elapsed, limit)
  if elapsed >= cdiv(level, limit) then
    return 0
  end
  return level - elapsed * limit
end

-- When a fluid level is empty again, `lag` ms after the real now: how long its state matters.
local function fluid_reset(l, limit, lag)
  if l == 0 then
    return 0
  end
  return cdiv(l, limit) + lag
end

local function fluid_remaining(l, cap, period)
  if cap > l then
    return idiv(cap - l, period)
  end
  return 0
end

-- When one unit more than the remaining fits, `lag` ms after the real now: once the level is
-- down to cap - (remaining + 1) x period. 0 for an empty level.
local function fluid_next(l, cap, period, limit, lag)
  if l == 0 then
    return 0
  end
  local fits = cap - (fluid_remaining(l, cap, period) + 1) * period
  if fits < 0 then
    fits = 0
  end
  return cdiv(l - fits, limit) + lag
end

-- Decides `cost` on `level` (drained to the effective time, `lag` ms after the real now). An
-- admission carries the new level in place of the state; the strategy encodes it.
local function fluid_step(level, cost, lag, period, limit, cap, queue)
  local r, ttl = fluid_next(level, cap, period, limit, lag), fluid_reset(level, limit, lag)
  if cost == 0 then
    return admit(fluid_remaining(level, cap, period), r, 0, nil, ttl)
  end
  local need_units = cost * period
  if need_units > cap then
    return deny(fluid_remaining(level, cap, period), r, period, ttl)
  end
  local need = level + need_units
  local bound = cap + queue
  if need <= bound then
    local delay = 0
    if need > cap then
      delay = cdiv(need - cap, limit) + lag
    end
    return admit(fluid_remaining(need, cap, period), fluid_next(need, cap, period, limit, lag), delay, need,
      fluid_reset(need, limit, lag))
  end
  return deny(fluid_remaining(level, cap, period), r, cdiv(need - bound, limit) + lag, ttl)
end
