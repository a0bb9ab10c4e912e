-- One new client identity per request: header x-client = <prefix><n> for n = 1..count, then the
-- last value again; the thread stops once `count` responses arrived (wrk's -d bounds it too).
-- Usage: wrk -t1 -s distinct.lua URL -- COUNT PREFIX
local count, prefix = 0, "c"
local sent, received = 0, 0

function init(args)
  count = tonumber(args[1]) or 0
  prefix = args[2] or "c"
end

function request()
  if sent < count then
    sent = sent + 1
  end
  return wrk.format("GET", nil, { ["x-client"] = prefix .. sent })
end

function response(status, headers, body)
  received = received + 1
  if received >= count then
    wrk.thread:stop()
  end
end
