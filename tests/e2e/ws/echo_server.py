"""A WebSocket echo server for sluice's end-to-end tests, built on the `websockets` library.

    python3 echo_server.py PORT LOG [--no-deflate]

Listens on 127.0.0.1:PORT (permessage-deflate offered unless --no-deflate), echoes every
message it receives, and appends one JSON line per event to LOG: each message it received
(connection number, path, type, payload) and each connection's end (the close code and reason
the client's close frame carried, if one came). Prints "ready" once it listens; stops when its
standard input closes or it is killed.
"""

import asyncio
import itertools
import json
import sys

from websockets.asyncio.server import serve

counter = itertools.count(1)


def main():
    port, log_path = int(sys.argv[1]), sys.argv[2]
    deflate = "--no-deflate" not in sys.argv[3:]
    log = open(log_path, "a", buffering=1)

    def record(event):
        log.write(json.dumps(event) + "\n")

    async def echo(ws):
        conn = next(counter)
        path = ws.request.path
        try:
            async for msg in ws:
                if isinstance(msg, str):
                    record({"conn": conn, "path": path, "event": "message", "type": "text", "data": msg})
                else:
                    record({"conn": conn, "path": path, "event": "message", "type": "binary", "data": msg.hex()})
                await ws.send(msg)
        except Exception as e:  # a connection failed: the test reads why
            record({"conn": conn, "path": path, "event": "error", "error": repr(e)})
        finally:
            rcvd = ws.protocol.close_rcvd
            record({
                "conn": conn, "path": path, "event": "closed",
                "code": rcvd.code if rcvd else None, "reason": rcvd.reason if rcvd else None,
                "extensions": ws.response.headers.get("sec-websocket-extensions") if ws.response else None,
            })

    async def run():
        compression = "deflate" if deflate else None
        async with serve(echo, "127.0.0.1", port, compression=compression, max_size=None, ping_interval=None):
            print("ready", flush=True)
            loop = asyncio.get_running_loop()
            # Until the test closes our standard input (or kills us).
            await loop.run_in_executor(None, sys.stdin.read)

    asyncio.run(run())


if __name__ == "__main__":
    main()
