-- sluice decision script, shared part. Not a script on its own: src/strategy/lua.rs joins
-- common.lua, the eight strategy files and decide.lua (in that order) into ONE script, so that
-- a single EVALSHA decides every rule of a request, all-or-nothing. decide.lua documents the
-- KEYS/ARGV contract and the reply.
--
-- Every name is local: Redis forbids scripts to create globals.
--
-- Arithmetic: the strategies mirror src/strategy/*.rs exactly. Lua numbers are doubles, which
-- hold every integer below 2^53 exactly; the Rust side was written so that realistic rules
-- (epoch ms ~1.7e12, limits up to 1e6, periods up to days: capacity x period <= ~1e14) keep
-- every intermediate value below that, and math.floor(a / b) is then the exact quotient.

-- Strategy name -> function(raw_state, now_ms, limit, period_ms, cost, p1, p2) returning a
-- decision: {allowed (1/0), remaining, reset_ms, retry_after_ms, delay_ms, ttl_ms, new_state}.
local S = {}

local function idiv(a, b)
  return math.floor(a / b)
end

-- ceil(a / b) for a >= 0, b > 0, without forming a + b - 1.
local function cdiv(a, b)
  local q = math.floor(a / b)
  if q * b < a then
    q = q + 1
  end
  return q
end

-- Integer to decimal text. tostring() would switch to exponent notation above 1e14.
local function num(x)
  return string.format('%.0f', x)
end

-- The numbers stored after `tag` in a state string ("tag n1 n2 ..."), or nil when the state is
-- missing or does not decode (another strategy's tag, wrong count, not an integer, negative
-- unless `signed`): such a state is treated as never seen, like the Rust side does.
local function parse(raw, tag, count, signed)
  if type(raw) ~= 'string' then
    return nil
  end
  local out, seen_tag = {}, false
  for tok in string.gmatch(raw, '%S+') do
    if not seen_tag then
      if tok ~= tag then
        return nil
      end
      seen_tag = true
    else
      local v = tonumber(tok)
      if v == nil or v ~= v or v == math.huge or v == -math.huge or v ~= math.floor(v) then
        return nil
      end
      if v < 0 and not signed then
        return nil
      end
      out[#out + 1] = v
    end
  end
  if not seen_tag or (count ~= nil and #out ~= count) then
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

-- Decides `cost` on `level` (drained to the effective time, `lag` ms after the real now);
-- `encode(new_level)` gives the state to store.
local function fluid_step(level, cost, lag, period, limit, cap, queue, encode)
  local function reset(l)
    if l == 0 then
      return 0
    end
    return cdiv(l, limit) + lag
  end
  local function remaining(l)
    if cap > l then
      return idiv(cap - l, period)
    end
    return 0
  end
  if cost == 0 then
    return admit(remaining(level), reset(level), 0, nil, reset(level))
  end
  local need_units = cost * period
  if need_units > cap then
    return deny(remaining(level), reset(level), period, reset(level))
  end
  local need = level + need_units
  local bound = cap + queue
  if need <= bound then
    local delay = 0
    if need > cap then
      delay = cdiv(need - cap, limit) + lag
    end
    local r = reset(need)
    return admit(remaining(need), r, delay, encode(need), r)
  end
  return deny(remaining(level), reset(level), cdiv(need - bound, limit) + lag, reset(level))
end
