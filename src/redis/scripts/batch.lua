-- sluice: the batch function of the library assembled by src/redis/script.rs (after
-- decide.lua, whose `decide` it runs per call). Not part of the script: only sluice-gateway
-- sends batches, and only as FCALL.
--
-- A BATCH (FCALL sluice_batch_<id>; sluice-gateway sends one per Redis round trip): several
-- calls in one, decided in order exactly as if they were sent one after another, each
-- all-or-nothing on its own. What it saves Redis is per call: command dispatch, the Lua
-- entry, TIME (one serves the batch), and a GET and a SET per call of a key that several
-- calls name: each key is read once and written once, with its last state and lifetime.
-- KEYS      every call's keys, call after call (one cluster slot on a Cluster).
-- ARGV      c, then n_1 m_1 ... n_c m_c (call j's key and argument counts), then every
--           call's arguments, call after call, each laid out as for one call.
-- Reply    {r_1, ..., r_c}: r_j is call j's reply as above, or its error (a key holding
--           another type is an error of the calls that name it, as for one call).
-- Errors   a layout that does not add up is an error of the whole batch, and nothing runs.
local function batch(KEYS, ARGV)
  -- As many keys as the gateway runs at once (src/redis/script.rs, MAX_RUN_KEYS).
  if #KEYS > 64 then
    return redis.error_reply('ERR sluice: a batch names ' .. #KEYS
      .. " keys; at most 64 (one rule's limits, or what the gateway runs at once)")
  end
  bind()
  local c = int_arg(ARGV[1])
  if c == nil or c < 1 or #ARGV < 1 + 2 * c then
    return redis.error_reply('ERR sluice: a batch starts with its call count and two counts per call')
  end
  local keys, args, ns, ms = 0, 1 + 2 * c, {}, {}
  for j = 1, c do
    local n, m = int_arg(ARGV[2 * j]), int_arg(ARGV[2 * j + 1])
    if n == nil or m == nil or n < 1 or n > 8 then
      return redis.error_reply('ERR sluice: call ' .. j .. ' of the batch has no keys or bad counts')
    end
    ns[j], ms[j] = n, m
    keys, args = keys + n, args + m
  end
  if keys ~= #KEYS or args ~= #ARGV then
    return redis.error_reply('ERR sluice: the batch names ' .. keys .. ' keys and ' .. args
      .. ' arguments; it has ' .. #KEYS .. ' and ' .. #ARGV)
  end
  local ctx, out = script_call(), {}
  local k0, a0 = 0, 1 + 2 * c
  for j = 1, c do
    local n, m = ns[j], ms[j]
    -- An error raised in one call (a key of another type) is that call's alone, as it would
    -- be were it its own FCALL: a call raises before it records any write.
    local ok, r = pcall(decide, KEYS, ARGV, k0, n, a0, m, ctx)
    if ok or type(r) == 'table' then
      out[j] = r
    else
      out[j] = redis.error_reply(tostring(r))
    end
    k0, a0 = k0 + n, a0 + m
  end
  flush(ctx)
  return out
end
