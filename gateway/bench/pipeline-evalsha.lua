-- wrk script: POST /pipeline with one call of sluice's decision script per request, as the
-- filter sends it (one rule, one limit, fixed_window, cost 1; the rule's limit is far out of
-- reach, so every request is admitted and written).
-- usage: wrk -t2 -c32 -d10s -s gateway/bench/pipeline-evalsha.lua http://127.0.0.1:7379/pipeline -- SHA [TOKEN]
-- SHA is the gateway's script SHA: "script" in GET /healthz. The gateway accepts nothing else
-- (any other script's SHA is refused with 400) and loads the script itself.
-- Every response is checked for a result; errors are counted and printed at the end.
local errors = 0

function init(args)
  local sha = args[1] or error("pass the gateway's script SHA (GET /healthz) after --")
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if args[2] then wrk.headers["Authorization"] = "Bearer " .. args[2] end
  wrk.body = '[["EVALSHA","' .. sha .. '","1","bench:{api:0000000000000001}:0.00000000",'
    .. '"fixed_window","1000000000000","60000","1","0","0"]]'
end

function response(status, headers, body)
  if status ~= 200 or not body:find('"result"', 1, true) then
    errors = errors + 1
    if errors == 1 then print("first bad response: " .. status .. " " .. body) end
  end
end

function done(summary, latency, requests)
  io.write(string.format("non-2xx or error responses: %d\n", summary.errors.status))
end
