"""Section 6: requests per second through one sluice-gateway, alone: wrk POSTs /pipeline with
one EVALSHA per request (gateway/bench/pipeline-evalsha.lua) to the gateway in front of one
redis-server. The script is a small counter (INCR + PEXPIRE on one key), so the figure is the
gateway's own cost per request plus one Redis round trip, not a strategy's."""
import os
import subprocess

from common import LOOPBACK, ROOT, log, median
import loadgen
import redisenv

COUNTER = "local n = redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], 60000) return n"
SCRIPT = os.path.join(ROOT, "gateway", "bench", "pipeline-evalsha.lua")


def run(stack, reps, seconds, connections, wrk_cpus):
    sha = subprocess.run(["redis-cli", "-h", LOOPBACK, "-p", str(stack.redis_port), "SCRIPT", "LOAD", COUNTER],
                         capture_output=True, text=True, timeout=10).stdout.strip()
    if len(sha) != 40:
        raise RuntimeError(f"SCRIPT LOAD answered {sha!r}")
    url = f"http://{LOOPBACK}:{stack.port}/pipeline"
    loadgen.wrk(url, 2, connections, cpus=wrk_cpus, script=SCRIPT, script_args=(sha, redisenv.TOKEN))  # warm-up
    runs = []
    for rep in range(reps):
        r = loadgen.wrk(url, seconds, connections, cpus=wrk_cpus, script=SCRIPT, script_args=(sha, redisenv.TOKEN),
                        watch=list(reversed(stack.pids)))  # the gateway first: its cores are reported
        log(f"gateway rep {rep + 1}: {r['rps']:.0f} req/s p50 {r.get('p50_ms', 0):.3f} ms p99 {r.get('p99_ms', 0):.3f} ms "
            f"non-2xx {r['non_2xx']} socket errors {r['socket_errors']}")
        runs.append(r)
    row = {m: median(r.get(m) for r in runs) for m in ("rps", "p50_ms", "p90_ms", "p99_ms", "target_cores", "others_cores")}
    row["errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in runs)
    row["requests"] = sum(r["requests"] for r in runs)
    return {"connections": connections, "reps": reps, "seconds": seconds, "row": row, "runs": runs}
