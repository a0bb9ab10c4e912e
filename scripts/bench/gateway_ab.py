"""Same-run A/B of two sluice-gateway builds: both in front of one redis-server, each driven in
turn by wrk as the benchmark's gateway section drives one (POST /pipeline, one call of sluice's
decision script per request, FCALL), in alternating pairs so that a noisy neighbour hurts both
alike. Prints, per run and as medians with their spread, the gateway's CPU µs per request,
Redis' and req/s, and B / A per pair.

    python3 scripts/bench/gateway_ab.py A/sluice-gateway B/sluice-gateway --reps 10

The gateways and Redis share one core, wrk has the other (as in `--sections gateway`); the
stack's own gateway (target/release/sluice-gateway, which must be built) idles beside them. A
run with a failed request, or one of status other than 2xx, stops the comparison."""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LOOPBACK, spread  # noqa: E402
from ab import pinning  # noqa: E402
import gateway  # noqa: E402
import loadgen  # noqa: E402
import redisenv  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="build A (the baseline), a sluice-gateway binary")
    ap.add_argument("b", help="build B (the change)")
    ap.add_argument("--reps", type=int, default=8, help="pairs of runs")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=64, help="as the gateway section's")
    args = ap.parse_args()
    load_cpus, stack_cpus = pinning()
    with tempfile.TemporaryDirectory(prefix="sluice-gateway-ab-") as work:
        stack = redisenv.RedisStack(work, cpus=stack_cpus)
        try:
            ports = {name: stack.add_gateway(name, ["--redis-calls", "fcall"], os.path.abspath(path))
                     for name, path in (("A", args.a), ("B", args.b))}
            sha = gateway.health(ports["A"])["script"]
            if gateway.health(ports["B"])["script"] != sha:
                sys.exit("the two builds run different decision scripts: their figures would not compare")
            url = {name: f"http://{LOOPBACK}:{port}/pipeline" for name, port in ports.items()}
            for name in ("A", "B"):  # warm-up: connections, Redis' first calls
                loadgen.wrk(url[name], 2, args.connections, cpus=load_cpus, script=gateway.SCRIPT,
                            script_args=(sha, redisenv.TOKEN))
            runs = {"A": [], "B": []}
            for rep in range(args.reps):
                for name in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                    _, pid = stack.gateway(name)
                    r = loadgen.wrk(url[name], args.seconds, args.connections,
                                    cpus=load_cpus, script=gateway.SCRIPT, script_args=(sha, redisenv.TOKEN),
                                    watch=[pid, stack.pids[0]])
                    if r["non_2xx"] or r["socket_errors"] or not r["requests"]:
                        sys.exit(f"build {name}: {r['non_2xx']} responses not 2xx, {r['socket_errors']} socket "
                                 f"errors in {r['requests']} requests: its figures would not compare")
                    n = r["requests"]
                    row = {"gateway_us": r["cpu_s"][0] / n * 1e6, "redis_us": r["cpu_s"][1] / n * 1e6,
                           "rps": r["rps"], "others": r["others_cores"]}
                    runs[name].append(row)
                    print(f"pair {rep + 1} {name}: gateway {row['gateway_us']:.2f} µs/req, Redis {row['redis_us']:.2f}, "
                          f"{row['rps']:.0f} req/s (others {row['others']:.2f} cores)", flush=True)
        finally:
            stack.stop()
    for name in ("A", "B"):
        g = [r["gateway_us"] for r in runs[name]]
        s = spread(g)
        print(f"{name}: gateway {statistics.median(g):.2f} µs/req (spread {'–' if s is None else f'{s:.0%}'}), "
              f"Redis {statistics.median([r['redis_us'] for r in runs[name]]):.2f}, "
              f"{statistics.median([r['rps'] for r in runs[name]]):.0f} req/s")
    ratios = [b["gateway_us"] / a["gateway_us"] for a, b in zip(runs["A"], runs["B"])]
    print(f"gateway CPU per request B / A: median {statistics.median(ratios):.3f}, "
          f"per pair {', '.join(f'{x:.3f}' for x in ratios)}")


if __name__ == "__main__":
    main()
