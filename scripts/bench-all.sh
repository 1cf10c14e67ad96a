#!/usr/bin/env bash
# Re-takes every figure of BENCHMARKS.md: each run appends one JSON line to
# benches/results.jsonl, then the charts are redrawn from them. About 10 minutes on the
# 2-core reference machine, 3 more with the peers (Nchan, Socket.IO) when they are
# installed. Run it on a quiet machine: the figures are CPU seconds.
#
#   scripts/bench-all.sh [--note "what changed"]
set -euo pipefail
cd "$(dirname "$0")/.."

note=${2:-}
load() {
    # Every run is bounded by the tool's own --duration cap (60 s unless raised).
    cargo bench --quiet --bench load -- "$@" --no-build ${note:+--note "$note"}
}

cargo build --release --bin cascade

for transport in websocket sse longpoll; do
    for connections in 1000 5000 15000; do
        load idle --transport "$transport" --connections "$connections" --duration 120
    done
done

# Clients that ask /negotiate on their connection first, as a browser's ladder client does.
for transport in sse longpoll; do
    load idle --transport "$transport" --connections 5000 --negotiate --duration 120
done

# Paced at the latency target's rate, then unpaced (efficiency once writes batch).
for transport in websocket sse longpoll poll; do
    for subscribers in 100 1000 10000; do
        load fanout --transport "$transport" --subscribers "$subscribers" --messages 400 --rate 40 --duration 120
    done
done
for transport in websocket sse longpoll; do
    for subscribers in 100 1000 10000; do
        load fanout --transport "$transport" --subscribers "$subscribers" --messages 2000 --rate 0 --duration 120
    done
done

# Subscribers that also follow a quiet channel of their own, as a user's private channel
# beside a room.
for transport in websocket sse; do
    load fanout --transport "$transport" --subscribers 1000 --messages 400 --rate 40 --own-channel --duration 120
done

load fanout --transport longpoll --subscribers 1000 --messages 1000 --rate 100
load poll --transport poll --clients 1000 --seconds 5
load poll --transport longpoll --clients 1000 --seconds 5

# The floor: the same runs against a stand-in that only writes (one write per
# delivery), for what this machine's kernel allows any server.
for subscribers in 100 1000 10000; do
    load fanout --server floor --subscribers "$subscribers" --messages 400 --rate 40 --duration 120
done
load fanout --server floor --transport longpoll --subscribers 1000 --messages 1000 --rate 100
load poll --server floor --transport poll --clients 1000 --seconds 5

# Per-channel memory: the same 10,000 WebSocket subscribers on one channel, then on
# 10,000 channels; the difference in RSS is what the channels themselves cost.
# 100 million deliveries on one channel: allow a slower machine more than the default
# 60 s cap, or the messages still queued at the cap count as lost.
load channels --subscribers 10000 --channels 1 --messages 10000 --duration 300
load channels --subscribers 10000 --channels 10000 --messages 20000 --duration 120

# The peers the targets are quoted against, on this machine, when they are installed
# (BENCHMARKS.md, "Peers on the same machine"); skipped, and said so, when they are not.
if [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
    for transport in websocket sse; do
        for subscribers in 100 1000 10000; do
            load fanout --server nchan --transport "$transport" --subscribers "$subscribers" --messages 400 --rate 40 --duration 120
        done
        load fanout --server nchan --transport "$transport" --subscribers 1000 --messages 2000 --rate 0 --duration 120
        for connections in 1000 5000 15000; do
            load idle --server nchan --transport "$transport" --connections "$connections" --duration 120
        done
    done
else
    echo "bench-all: Nchan skipped (apt-get install nginx libnginx-mod-nchan)" >&2
fi
if [ -d benches/peers/node_modules/socket.io ]; then
    for subscribers in 100 1000 10000; do
        load fanout --server socketio --subscribers "$subscribers" --messages 400 --rate 40 --duration 120
    done
    load fanout --server socketio --subscribers 1000 --messages 2000 --rate 0 --duration 120
    for connections in 1000 5000 15000; do
        load idle --server socketio --connections "$connections" --duration 120
    done
else
    echo "bench-all: Socket.IO skipped (npm ci --prefix benches/peers)" >&2
fi

python3 scripts/chart.py --rate 40 --output docs/bench.svg
python3 scripts/chart.py --rate 0 --output docs/bench-unpaced.svg
