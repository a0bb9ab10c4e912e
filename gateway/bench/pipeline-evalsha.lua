-- wrk script: POST /pipeline with one EVALSHA per request.
-- usage: wrk -t2 -c32 -d10s -s gateway/bench/pipeline-evalsha.lua http://127.0.0.1:7379/pipeline -- SHA [TOKEN]
-- SHA is the sha1 of a script loaded beforehand (SCRIPT LOAD); every response is checked
-- for a result, and errors are counted and printed at the end.
local errors = 0

function init(args)
  local sha = args[1] or error("pass the script's sha after --")
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if args[2] then wrk.headers["Authorization"] = "Bearer " .. args[2] end
  wrk.body = '[["EVALSHA","' .. sha .. '","1","bench:{k}:c"]]'
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
