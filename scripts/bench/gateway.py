"""Section 6: requests per second through one sluice-gateway, alone: wrk POSTs /pipeline with
one call of sluice's decision script per request, as the filter sends it
(gateway/bench/pipeline-evalsha.lua: one rule, one limit far out of reach, so every call is
admitted and written), to the gateway in front of one redis-server. The gateway runs only
sluice's script (any other is refused with 400), as FCALL of its function library on Redis 7,
else as EVALSHA ("calls" in the result). The figure is the gateway's own cost per request plus
one decision in Redis."""
import json
import os
import urllib.request

from common import LOOPBACK, ROOT, log, median
import loadgen
import redisenv

SCRIPT = os.path.join(ROOT, "gateway", "bench", "pipeline-evalsha.lua")


def health(port):
    """The gateway's GET /healthz: the SHA it accepts ("script") and how its calls run ("calls")."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=10) as r:
            return json.loads(r.read())
    except OSError as e:
        raise RuntimeError(f"sluice-gateway /healthz: {e}") from e


def run(stack, reps, seconds, connections, wrk_cpus):
    h = health(stack.port)
    sha = h.get("script", "")
    if len(sha) != 40:
        raise RuntimeError(f"/healthz names no script SHA: {h!r}")
    url = f"http://{LOOPBACK}:{stack.port}/pipeline"
    args = (sha, redisenv.TOKEN)
    loadgen.wrk(url, 2, connections, cpus=wrk_cpus, script=SCRIPT, script_args=args)  # warm-up
    runs = []
    for rep in range(reps):
        r = loadgen.wrk(url, seconds, connections, cpus=wrk_cpus, script=SCRIPT, script_args=args,
                        watch=list(reversed(stack.pids)))  # the gateway first: its cores are reported
        log(f"gateway rep {rep + 1}: {r['rps']:.0f} req/s p50 {r.get('p50_ms', 0):.3f} ms p99 {r.get('p99_ms', 0):.3f} ms "
            f"non-2xx {r['non_2xx']} socket errors {r['socket_errors']}")
        runs.append(r)
    row = {m: median(r.get(m) for r in runs) for m in ("rps", "p50_ms", "p90_ms", "p99_ms", "target_cores", "others_cores")}
    row["errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in runs)
    row["requests"] = sum(r["requests"] for r in runs)
    return {"connections": connections, "reps": reps, "seconds": seconds, "calls": health(stack.port).get("calls"),
            "row": row, "runs": runs}
