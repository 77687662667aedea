#!/usr/bin/env bash
# Benchmarks `chaos proxy` against HAProxy and against nginx directly, in
# one run on loopback: wrk -t1 -c32 -d5s --latency for each target, then
# prints req/s, p50 and p99 per target and the ratios the issue sets goals
# for (chaos >= 1.05x HAProxy throughput, chaos p99 <= HAProxy p99), and
# for each goal a verdict on the per-round ratios: met, missed, or not
# resolved by the run (see goal_verdict).
#
# Usage: benches/proxy.sh [--rss]   (--rss adds 60 s of load on chaos and
#                                     reports its peak RSS, VmHWM)
# Env: ROUNDS (default 10): the targets are measured in interleaved
# rounds and the median per target is reported, so load drift on a shared
# machine hits all of them alike (on a 2-core machine single rounds of the
# same binary differ by up to 1.5x in p99, so fewer rounds decide little;
# the full run takes about 13 minutes). DURATION (5s), CONNS (32),
# CHAOS_ARGS (extra flags for chaos proxy, e.g. "--workers 1").
# GENERAL (default 1): also measure the same chaos binary with
# --no-fast-path (every request through the general hyper path), as target
# "general", to show what the HTTP/1.1 fast path buys.
# CHAOS_BIN=/path/to/chaos: measure that binary instead of building one.
# CHAOS_BASELINE=/path/to/chaos: A/B a second build (e.g. main's) in the same
# interleaved rounds, as target "base" (same flags); prints chaos/base.
# TLS=1: also measure TLS termination, HAProxy (`ssl crt`) against
# `chaos proxy --tls-cert/--tls-key` (a self-signed certificate made with
# openssl; wrk over https, HTTP/1.1, plain HTTP to nginx behind both).
# FIXED_RATE (default 1): also p50/p99/p99.9 of HAProxy and chaos at the
# same fixed request rate (h2load --h1 --rps; RATE_SHARE of HAProxy's
# median req/s, default 0.75), since closed-loop wrk loads the faster
# proxy harder.
# EXTRA (default 1): also WebSocket echo rounds and h2c-upstream rounds,
# chaos against HAProxy (0 skips them, e.g. for a baseline without h2c);
# h2c against HAProxy twice: pooling one upstream connection for all
# clients (its usual `http-reuse always`), and with one upstream connection
# per client connection as the relay has (`http-reuse never`), with nginx's
# CPU per request behind each; h2c p99 comes from h2load's per-request log;
# WS_BENCH_BIN=/path/to/ws_bench: use that build of the example.
# Needs: wrk, nginx, haproxy, h2load (nghttp2-client) (Debian packages),
# cargo. Builds the `perf` profile (release + one codegen unit) and the
# `ws_bench` example (the WebSocket echo server and load generator).
# Every process it starts is stopped by PID on exit.
set -euo pipefail

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-10}
CONNS=${CONNS:-32}
RSS_SECONDS=${RSS_SECONDS:-60}
cd "$(dirname "$0")/.."

for tool in wrk nginx haproxy; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y wrk nginx haproxy)" >&2; exit 5; }
done

if [[ -n "${CHAOS_BIN:-}" ]]; then
  CHAOS=$CHAOS_BIN   # a prebuilt binary (e.g. a copy kept for A/B runs)
else
  cargo build --profile perf --quiet
  CHAOS=$PWD/target/perf/chaos
fi
EXTRA=${EXTRA:-1}
if [[ "$EXTRA" == 1 ]]; then
  command -v h2load >/dev/null || { echo "missing h2load (apt-get install -y nghttp2-client)" >&2; exit 5; }
  if [[ -z "${WS_BENCH_BIN:-}" ]]; then
    cargo build --profile perf --quiet --example ws_bench
  fi
  WS_BENCH=${WS_BENCH_BIN:-$PWD/target/perf/examples/ws_bench}
fi

W=$(mktemp -d /tmp/chaos-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on port $1" >&2; exit 5
}

NGINX_PORT=$(free_port); HAPROXY_PORT=$(free_port); CHAOS_PORT=$(free_port); ADMIN_PORT=$(free_port)
BASE_PORT=$(free_port); HAPROXY_TLS_PORT=$(free_port); CHAOS_TLS_PORT=$(free_port)
TARGETS=(direct haproxy chaos)

# nginx: one worker, a 100-byte file, no access log.
mkdir -p "$W/www" "$W/nginx"
head -c 100 /dev/zero | tr '\0' 'x' > "$W/www/index.html"
cat > "$W/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  server { listen 127.0.0.1:$NGINX_PORT; root $W/www; }
}
CONF
nginx -c "$W/nginx.conf" -p "$W" & NGINX_PID=$!; PIDS+=($NGINX_PID)

if [[ "${TLS:-0}" == 1 ]]; then
  command -v openssl >/dev/null || { echo "missing openssl" >&2; exit 5; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -keyout "$W/tls.key" -out "$W/tls.crt" 2>/dev/null
  cat "$W/tls.crt" "$W/tls.key" > "$W/tls.pem"
fi

# HAProxy in http mode with keep-alive to the server (its defaults for
# threads: one per core); every HAProxy config here starts with these.
haproxy_defaults() {
  cat <<CONF
global
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 2s
  timeout client 30s
  timeout server 30s
CONF
}
cat > "$W/haproxy.cfg" <<CONF
$(haproxy_defaults)
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
$(if [[ "${TLS:-0}" == 1 ]]; then
  echo "frontend fe_tls"
  echo "  bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $W/tls.pem alpn http/1.1"
  echo "  default_backend be"
fi)
backend be
  http-reuse always
  server s1 127.0.0.1:$NGINX_PORT
CONF
haproxy -f "$W/haproxy.cfg" -db & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)

# chaos proxy: recording on (5% + 5% cohorts, reservoirs, Prometheus), no fault.
"$CHAOS" proxy --listen "127.0.0.1:$CHAOS_PORT" --upstream "http://127.0.0.1:$NGINX_PORT" \
  --experiment-percent 5 --control-percent 5 --admin "127.0.0.1:$ADMIN_PORT" \
  ${CHAOS_ARGS:-} 2>"$W/chaos.log" & CHAOS_PID=$!; PIDS+=($CHAOS_PID)

wait_port "$NGINX_PORT"; wait_port "$HAPROXY_PORT"; wait_port "$CHAOS_PORT"

# The general path of the same binary, for the fast-path comparison.
if [[ "${GENERAL:-1}" == 1 ]]; then
  GENERAL_PORT=$(free_port)
  "$CHAOS" proxy --listen "127.0.0.1:$GENERAL_PORT" --upstream "http://127.0.0.1:$NGINX_PORT" \
    --experiment-percent 5 --control-percent 5 --admin "127.0.0.1:$(free_port)" \
    --no-fast-path ${CHAOS_ARGS:-} 2>"$W/general.log" & GENERAL_PID=$!; PIDS+=($GENERAL_PID)
  wait_port "$GENERAL_PORT"; TARGETS+=(general)
fi
# Optional: a second chaos build in the same rounds (A/B).
if [[ -n "${CHAOS_BASELINE:-}" ]]; then
  "$CHAOS_BASELINE" proxy --listen "127.0.0.1:$BASE_PORT" \
    --upstream "http://127.0.0.1:$NGINX_PORT" --experiment-percent 5 \
    --control-percent 5 --admin "127.0.0.1:$(free_port)" ${CHAOS_ARGS:-} \
    2>"$W/base.log" & BASE_PID=$!; PIDS+=($BASE_PID)
  wait_port "$BASE_PORT"; TARGETS+=(base)
fi
# Optional: TLS termination, chaos against HAProxy (same nginx behind).
if [[ "${TLS:-0}" == 1 ]]; then
  "$CHAOS" proxy --listen "127.0.0.1:$CHAOS_TLS_PORT" \
    --upstream "http://127.0.0.1:$NGINX_PORT" --experiment-percent 5 \
    --control-percent 5 --tls-cert "$W/tls.crt" --tls-key "$W/tls.key" \
    ${CHAOS_ARGS:-} 2>"$W/chaos-tls.log" & CHAOS_TLS_PID=$!; PIDS+=($CHAOS_TLS_PID)
  wait_port "$HAPROXY_TLS_PORT"; wait_port "$CHAOS_TLS_PORT"
  TARGETS+=(haproxy-tls chaos-tls)
fi

# wrk latency lines look like "     50%  312.00us"; print milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
    printf "%.3f", n }'
}

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

declare -A RPS P50 P99 CPU USR
run() {
  local name=$1 url=$2 pid=$3 out before after n ubefore uafter
  wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null   # warm-up (connections, caches)
  before=$(cpu_ticks "$pid"); ubefore=$(user_ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url")
  after=$(cpu_ticks "$pid"); uafter=$(user_ticks "$pid")
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  # CPU the serving process spent per request: less noisy than req/s on a
  # shared machine, and it says where a throughput gap comes from.
  CPU[$name]+=" $(awk -v d=$((after - before)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')"
  USR[$name]+=" $(awk -v d=$((uafter - ubefore)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')"
  echo "$out" | grep -q "Non-2xx" && { echo "$name answered non-2xx:" >&2; echo "$out" >&2; exit 1; }
  RPS[$name]+=" $(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  P50[$name]+=" $(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")"
  P99[$name]+=" $(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")"
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

for r in $(seq 1 "$ROUNDS"); do
  run direct "http://127.0.0.1:$NGINX_PORT/index.html" "$NGINX_PID"
  run haproxy "http://127.0.0.1:$HAPROXY_PORT/index.html" "$HAPROXY_PID"
  run chaos "http://127.0.0.1:$CHAOS_PORT/index.html" "$CHAOS_PID"
  if [[ -n "${GENERAL_PID:-}" ]]; then
    run general "http://127.0.0.1:$GENERAL_PORT/index.html" "$GENERAL_PID"
  fi
  if [[ -n "${BASE_PID:-}" ]]; then
    run base "http://127.0.0.1:$BASE_PORT/index.html" "$BASE_PID"
  fi
  if [[ -n "${CHAOS_TLS_PID:-}" ]]; then
    run haproxy-tls "https://127.0.0.1:$HAPROXY_TLS_PORT/index.html" "$HAPROXY_PID"
    run chaos-tls "https://127.0.0.1:$CHAOS_TLS_PORT/index.html" "$CHAOS_TLS_PID"
  fi
done
# Per-round ratios: the rounds are interleaved so that a load swing hits
# both targets of a round alike; the median of the per-round ratios is the
# paired estimate (printed next to the ratio of the per-target medians).
paired() {  # "a1 a2 ..." "b1 b2 ..." -> median of a_i / b_i
  awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); split(b, y, " ");
    for (i = 1; i <= n; i++) printf "%.4f\n", x[i] / y[i] }' | median
}
# Rounds in which a_i / b_i meets a goal: "ge 1.05" or "le 1.00".
rounds_meeting() {  # "a1 a2 ..." "b1 b2 ..." ge|le goal -> "k of n"
  awk -v a="$1" -v b="$2" -v op="$3" -v g="$4" 'BEGIN { n = split(a, x, " "); split(b, y, " ");
    for (i = 1; i <= n; i++) { r = x[i] / y[i]; if ((op == "ge" && r >= g) || (op == "le" && r <= g)) k++ }
    printf "%d of %d", k, n }'
}
# Whether a run shows a goal met. Rounds differ so much on a shared
# machine that the median of per-round ratios alone says little, so this
# adds a distribution-free confidence interval for that median (the k-th
# smallest and k-th largest ratio, k the largest with coverage >= 90 %:
# coverage = 1 - 2 P(Binomial(n, 1/2) <= k - 1)) and judges the goal on it:
# met when the whole interval meets it, missed when none of it does, and
# "not resolved" when the interval straddles the goal (more rounds, or a
# quieter machine, would be needed to tell).
goal_verdict() {  # "a1 a2 ..." "b1 b2 ..." ge|le goal -> one line
  awk -v a="$1" -v b="$2" -v op="$3" -v g="$4" 'BEGIN {
    n = split(a, x, " "); split(b, y, " ")
    for (i = 1; i <= n; i++) r[i] = x[i] / y[i]
    for (i = 2; i <= n; i++) { v = r[i]; j = i - 1
      while (j >= 1 && r[j] > v) { r[j + 1] = r[j]; j-- }
      r[j + 1] = v }
    k = 1; cov = 1 - 2 / 2 ^ n; c = 1; cdf = 0
    for (i = 0; 2 * (i + 1) <= n; i++) {   # cdf = P(Bin <= i), c = C(n, i)
      cdf += c / 2 ^ n; c = c * (n - i) / (i + 1)
      if (1 - 2 * cdf >= 0.90) { k = i + 1; cov = 1 - 2 * cdf } else break
    }
    lo = r[k]; hi = r[n + 1 - k]; m = 0
    for (i = 1; i <= n; i++) if ((op == "ge" && r[i] >= g) || (op == "le" && r[i] <= g)) m++
    if (op == "ge") verdict = lo >= g ? "met" : (hi < g ? "missed" : "not resolved")
    else verdict = hi <= g ? "met" : (lo > g ? "missed" : "not resolved")
    printf "%s (per-round ratios %.3f to %.3f, %.0f%% interval for their median %.3f to %.3f; %d of %d rounds meet it)",
      verdict, r[1], r[n], 100 * cov, lo, hi, m, n }'
}
PAIRED_RPS=$(paired "${RPS[chaos]}" "${RPS[haproxy]}")
PAIRED_P99=$(paired "${P99[chaos]}" "${P99[haproxy]}")
ROUNDS_RPS=$(rounds_meeting "${RPS[chaos]}" "${RPS[haproxy]}" ge 1.05)
ROUNDS_P99=$(rounds_meeting "${P99[chaos]}" "${P99[haproxy]}" le 1.00)
RPS_ROUNDS_CHAOS=${RPS[chaos]}; RPS_ROUNDS_HAPROXY=${RPS[haproxy]}
P99_ROUNDS_CHAOS=${P99[chaos]}; P99_ROUNDS_HAPROXY=${P99[haproxy]}
for t in "${TARGETS[@]}"; do
  echo "rounds $t: req/s${RPS[$t]} | p99_ms${P99[$t]} | cpu_us/req${CPU[$t]}"
  RPS[$t]=$(echo "${RPS[$t]}" | median)
  P50[$t]=$(echo "${P50[$t]}" | median)
  P99[$t]=$(echo "${P99[$t]}" | median)
  CPU[$t]=$(echo "${CPU[$t]}" | median)
  USR[$t]=$(echo "${USR[$t]}" | median)
done

printf '\nwrk -t1 -c%s -d%s --latency, 100-byte file from nginx, median of %s rounds\n' \
  "$CONNS" "$DURATION" "$ROUNDS"
printf '%-12s %12s %10s %10s %12s %12s\n' target req/s p50_ms p99_ms cpu_us/req user_us/req
for t in "${TARGETS[@]}"; do
  printf '%-12s %12s %10s %10s %12s %12s\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${CPU[$t]}" "${USR[$t]}"
done
echo "(cpu_us/req: user+system CPU of the serving process per request, user_us/req"
echo " its user-space part; for direct that is nginx alone, for the proxies the"
echo " proxy alone)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
echo
echo "throughput chaos/haproxy: $(ratio "${RPS[chaos]}" "${RPS[haproxy]}")  (goal >= 1.05)"
echo "p99        chaos/haproxy: $(ratio "${P99[chaos]}" "${P99[haproxy]}")  (goal <= 1.00)"
echo "cpu/request chaos/haproxy: $(ratio "${CPU[chaos]}" "${CPU[haproxy]}")"
echo "paired (median of per-round ratios) chaos/haproxy: throughput $PAIRED_RPS, p99 $PAIRED_P99"
echo "rounds meeting the goal: throughput >= 1.05x in $ROUNDS_RPS, p99 <= 1.00x in $ROUNDS_P99"
echo "goal throughput >= 1.05x: $(goal_verdict "$RPS_ROUNDS_CHAOS" "$RPS_ROUNDS_HAPROXY" ge 1.05)"
echo "goal p99 <= 1.00x:        $(goal_verdict "$P99_ROUNDS_CHAOS" "$P99_ROUNDS_HAPROXY" le 1.00)"
echo "throughput chaos/direct:  $(ratio "${RPS[chaos]}" "${RPS[direct]}")"
echo "throughput haproxy/direct: $(ratio "${RPS[haproxy]}" "${RPS[direct]}")"
if [[ -n "${GENERAL_PID:-}" ]]; then
  echo "fast path chaos/general: throughput $(ratio "${RPS[chaos]}" "${RPS[general]}"), p99 $(ratio "${P99[chaos]}" "${P99[general]}"), cpu/request $(ratio "${CPU[chaos]}" "${CPU[general]}")"
fi
if [[ -n "${BASE_PID:-}" ]]; then
  echo "A/B chaos/base: throughput $(ratio "${RPS[chaos]}" "${RPS[base]}"), p99 $(ratio "${P99[chaos]}" "${P99[base]}"), cpu/request $(ratio "${CPU[chaos]}" "${CPU[base]}")"
fi
if [[ -n "${CHAOS_TLS_PID:-}" ]]; then
  echo "TLS chaos/haproxy: throughput $(ratio "${RPS[chaos-tls]}" "${RPS[haproxy-tls]}"), p99 $(ratio "${P99[chaos-tls]}" "${P99[haproxy-tls]}"), cpu/request $(ratio "${CPU[chaos-tls]}" "${CPU[haproxy-tls]}")"
  echo "(haproxy-tls cpu/request is the whole HAProxy process, which serves only that load then)"
fi
# Equal offered load: closed-loop wrk gives the faster proxy more requests
# to carry, so its tail is measured at a higher load. h2load --h1 --rps
# offers the same fixed rate (RATE_SHARE of HAProxy's median req/s above)
# to both, and the percentiles come from its per-request log.
if [[ "${FIXED_RATE:-1}" == 1 ]] && command -v h2load >/dev/null; then
  share=${RATE_SHARE:-0.75}
  per_conn=$(awk -v r="${RPS[haproxy]}" -v s="$share" -v c="$CONNS" 'BEGIN { printf "%d", r * s / c }')
  pct() {  # log -> "p50 p99 p99.9" in ms (third column: microseconds)
    sort -n -k3,3 "$1" | awk '{v[NR]=$3} END {printf "%.3f %.3f %.3f\n", v[int(NR*0.5)]/1000, v[int(NR*0.99)]/1000, v[int(NR*0.999)]/1000}'
  }
  declare -A FR99
  for r in $(seq 1 "$ROUNDS"); do
    for t in haproxy chaos; do
      port=$HAPROXY_PORT; [[ $t == chaos ]] && port=$CHAOS_PORT
      rm -f "$W/rate.log"
      h2load --h1 -c"$CONNS" --rps="$per_conn" -D "${DURATION%s}" --log-file="$W/rate.log" \
        "http://127.0.0.1:$port/index.html" >/dev/null 2>&1 || true
      read -r p50 p99 p999 < <(pct "$W/rate.log")
      FR99[$t]+=" $p99"
      echo "fixed-rate round $r $t: p50 ${p50} ms, p99 ${p99} ms, p99.9 ${p999} ms"
    done
  done
  echo "fixed rate $((per_conn * CONNS)) req/s (${share} of HAProxy's), median of $ROUNDS rounds:" \
    "p99 haproxy $(echo "${FR99[haproxy]}" | median) ms, chaos $(echo "${FR99[chaos]}" | median) ms," \
    "chaos/haproxy $(ratio "$(echo "${FR99[chaos]}" | median)" "$(echo "${FR99[haproxy]}" | median)")," \
    "paired $(paired "${FR99[chaos]}" "${FR99[haproxy]}")"
fi
recorded=$(curl -s "http://127.0.0.1:$ADMIN_PORT/cohorts" || true)
echo "chaos cohorts recorded: $recorded"

if [[ "$EXTRA" == 1 ]]; then
  # WebSocket: 64-byte echo round trips over CONNS connections, through
  # HAProxy (http mode, tunnel after the upgrade) and through chaos.
  WS_PORT_FILE=$W/ws.port
  "$WS_BENCH" serve >"$WS_PORT_FILE" & WS_PID=$!; PIDS+=($WS_PID)
  for _ in $(seq 1 100); do [[ -s "$WS_PORT_FILE" ]] && break; sleep 0.05; done
  WS_PORT=$(cat "$WS_PORT_FILE")
  # h2c: nginx serving the same file over HTTP/2 with prior knowledge;
  # h2load (h2c, prior knowledge) -> HAProxy / chaos -> nginx.
  NGINX_H2_PORT=$(free_port)
  sed -e "s/listen 127.0.0.1:$NGINX_PORT;/listen 127.0.0.1:$NGINX_PORT; listen 127.0.0.1:$NGINX_H2_PORT http2;/" \
      -e "s#pid $W/nginx.pid#pid $W/nginx2.pid#" "$W/nginx.conf" > "$W/nginx2.conf"
  sed -i "s/listen 127.0.0.1:$NGINX_PORT;//" "$W/nginx2.conf"
  nginx -c "$W/nginx2.conf" -p "$W" & NGINX2_PID=$!; PIDS+=($NGINX2_PID)
  HA_WS_PORT=$(free_port); HA_H2_PORT=$(free_port); HA_H2_OWN_PORT=$(free_port)
  cat > "$W/haproxy2.cfg" <<CONF
$(haproxy_defaults)
  timeout tunnel 60s
frontend ws
  bind 127.0.0.1:$HA_WS_PORT
  default_backend ws
backend ws
  server w1 127.0.0.1:$WS_PORT
frontend h2
  bind 127.0.0.1:$HA_H2_PORT proto h2
  default_backend h2
backend h2
  http-reuse always
  server h1 127.0.0.1:$NGINX_H2_PORT proto h2
# The relay's connection model: one upstream connection per client one.
frontend h2own
  bind 127.0.0.1:$HA_H2_OWN_PORT proto h2
  default_backend h2own
backend h2own
  http-reuse never
  server h1 127.0.0.1:$NGINX_H2_PORT proto h2
CONF
  haproxy -f "$W/haproxy2.cfg" -db & HA2_PID=$!; PIDS+=($HA2_PID)
  CH_WS_PORT=$(free_port); CH_H2_PORT=$(free_port)
  "$CHAOS" proxy --listen "127.0.0.1:$CH_WS_PORT" --upstream "http://127.0.0.1:$WS_PORT" \
    --experiment-percent 5 --control-percent 5 ${CHAOS_ARGS:-} 2>"$W/chaos-ws.log" & CHWS_PID=$!; PIDS+=($CHWS_PID)
  "$CHAOS" proxy --listen "127.0.0.1:$CH_H2_PORT" --upstream "h2c://127.0.0.1:$NGINX_H2_PORT" \
    --experiment-percent 5 --control-percent 5 ${CHAOS_ARGS:-} 2>"$W/chaos-h2.log" & CHH2_PID=$!; PIDS+=($CHH2_PID)
  for p in "$WS_PORT" "$NGINX_H2_PORT" "$HA_WS_PORT" "$HA_H2_PORT" "$HA_H2_OWN_PORT" \
           "$CH_WS_PORT" "$CH_H2_PORT"; do wait_port "$p"; done
  secs=${DURATION%s}
  declare -A WRT WP99 H2R H2CPU H2UP H2P99 H2PAIRED_RPS H2PAIRED_P99
  ws_run() {  # name url
    local out
    out=$("$WS_BENCH" load "$2" "$CONNS" "$secs")
    WRT[$1]+=" $(echo "$out" | awk '{print $1}')"
    WP99[$1]+=" $(echo "$out" | awk '{print $3}')"
  }
  # The proxy's CPU per request, and nginx's (rounds run one at a time,
  # so nginx's CPU during a round is that target's).
  h2_run() {  # name url pid
    local before after up_before up_after out
    h2load -c "$CONNS" -m 10 -D 1 "$2" >/dev/null 2>&1 || true
    before=$(cpu_ticks "$3"); up_before=$(cpu_ticks "$NGINX2_PID")
    rm -f "$W/h2.log"
    out=$(h2load -c "$CONNS" -m 10 -D "$secs" --log-file="$W/h2.log" "$2" 2>&1)
    after=$(cpu_ticks "$3"); up_after=$(cpu_ticks "$NGINX2_PID")
    echo "$out" | grep -q "0 failed, 0 errored" || { echo "h2load through $1 failed:" >&2; echo "$out" >&2; exit 1; }
    local rps n
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    n=$(echo "$out" | awk '/^requests:/ {print $8}')
    H2R[$1]+=" $rps"
    # p99 of the request durations (third column, microseconds).
    H2P99[$1]+=" $(sort -n -k3,3 "$W/h2.log" | awk '{v[NR]=$3} END {printf "%.3f", v[int(NR*0.99)]/1000}')"
    H2CPU[$1]+=" $(awk -v d=$((after - before)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')"
    H2UP[$1]+=" $(awk -v d=$((up_after - up_before)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')"
  }
  for r in $(seq 1 "$ROUNDS"); do
    ws_run haproxy "ws://127.0.0.1:$HA_WS_PORT/"
    ws_run chaos "ws://127.0.0.1:$CH_WS_PORT/"
    h2_run haproxy "http://127.0.0.1:$HA_H2_PORT/index.html" "$HA2_PID"
    h2_run haproxy-1to1 "http://127.0.0.1:$HA_H2_OWN_PORT/index.html" "$HA2_PID"
    h2_run chaos "http://127.0.0.1:$CH_H2_PORT/index.html" "$CHH2_PID"
  done
  echo
  WPAIRED="throughput $(paired "${WRT[chaos]}" "${WRT[haproxy]}"), p99 $(paired "${WP99[chaos]}" "${WP99[haproxy]}")"
  WGOAL_RT=$(goal_verdict "${WRT[chaos]}" "${WRT[haproxy]}" ge 1.05)
  WGOAL_P99=$(goal_verdict "${WP99[chaos]}" "${WP99[haproxy]}" le 1.00)
  H2GOAL_RPS=$(goal_verdict "${H2R[chaos]}" "${H2R[haproxy]}" ge 1.05)
  H2GOAL_P99=$(goal_verdict "${H2P99[chaos]}" "${H2P99[haproxy]}" le 1.00)
  for t in haproxy chaos; do
    echo "rounds $t: ws rt/s${WRT[$t]} | ws p99_ms${WP99[$t]}"
    WRT[$t]=$(echo "${WRT[$t]}" | median); WP99[$t]=$(echo "${WP99[$t]}" | median)
  done
  for t in haproxy haproxy-1to1 chaos; do
    echo "rounds $t: h2c req/s${H2R[$t]} | h2c p99_ms${H2P99[$t]} | h2c cpu_us/req${H2CPU[$t]} | nginx cpu_us/req${H2UP[$t]}"
    H2PAIRED_RPS[$t]=$(paired "${H2R[chaos]}" "${H2R[$t]}")
    H2PAIRED_P99[$t]=$(paired "${H2P99[chaos]}" "${H2P99[$t]}")
  done
  for t in haproxy haproxy-1to1 chaos; do
    H2R[$t]=$(echo "${H2R[$t]}" | median); H2CPU[$t]=$(echo "${H2CPU[$t]}" | median)
    H2P99[$t]=$(echo "${H2P99[$t]}" | median)
    H2UP[$t]=$(echo "${H2UP[$t]}" | median)
  done
  echo "websocket echo (64 B, $CONNS conns, ${DURATION}), median of $ROUNDS rounds:"
  echo "  round trips/s haproxy ${WRT[haproxy]}  chaos ${WRT[chaos]}  chaos/haproxy $(ratio "${WRT[chaos]}" "${WRT[haproxy]}")"
  echo "  p99 ms        haproxy ${WP99[haproxy]}  chaos ${WP99[chaos]}  chaos/haproxy $(ratio "${WP99[chaos]}" "${WP99[haproxy]}")"
  echo "  paired (median of per-round ratios) chaos/haproxy: $WPAIRED"
  echo "  goal round trips >= 1.05x: $WGOAL_RT"
  echo "  goal p99 <= 1.00x: $WGOAL_P99"
  echo "h2c upstream (h2load -c$CONNS -m10, nginx http2 prior knowledge), median of $ROUNDS rounds:"
  echo "  req/s         haproxy ${H2R[haproxy]}  chaos ${H2R[chaos]}  chaos/haproxy $(ratio "${H2R[chaos]}" "${H2R[haproxy]}")  (goal >= 1.05)"
  echo "  p99 ms        haproxy ${H2P99[haproxy]}  chaos ${H2P99[chaos]}  chaos/haproxy $(ratio "${H2P99[chaos]}" "${H2P99[haproxy]}")  (goal <= 1.00)"
  echo "  paired (median of per-round ratios) chaos/haproxy: throughput ${H2PAIRED_RPS[haproxy]}, p99 ${H2PAIRED_P99[haproxy]}"
  echo "  goal req/s >= 1.05x: $H2GOAL_RPS"
  echo "  goal p99 <= 1.00x: $H2GOAL_P99"
  echo "  cpu_us/req    haproxy ${H2CPU[haproxy]}  chaos ${H2CPU[chaos]}  chaos/haproxy $(ratio "${H2CPU[chaos]}" "${H2CPU[haproxy]}")"
  echo "  nginx cpu_us/req behind haproxy ${H2UP[haproxy]}  behind chaos ${H2UP[chaos]}"
  echo "h2c, one upstream connection per client connection on both (HAProxy http-reuse never):"
  echo "  req/s         haproxy ${H2R[haproxy-1to1]}  chaos ${H2R[chaos]}  chaos/haproxy $(ratio "${H2R[chaos]}" "${H2R[haproxy-1to1]}")"
  echo "  p99 ms        haproxy ${H2P99[haproxy-1to1]}  chaos ${H2P99[chaos]}  chaos/haproxy $(ratio "${H2P99[chaos]}" "${H2P99[haproxy-1to1]}")"
  echo "  cpu_us/req    haproxy ${H2CPU[haproxy-1to1]}  chaos ${H2CPU[chaos]}  chaos/haproxy $(ratio "${H2CPU[chaos]}" "${H2CPU[haproxy-1to1]}")"
  echo "  nginx cpu_us/req behind haproxy ${H2UP[haproxy-1to1]}  behind chaos ${H2UP[chaos]}"
fi

if [[ "${1:-}" == "--rss" ]]; then
  echo
  echo "peak RSS of chaos proxy under ${RSS_SECONDS}s of load:"
  before=$(awk '/VmHWM/ {print $2}' "/proc/$CHAOS_PID/status")
  wrk -t1 -c"$CONNS" -d"${RSS_SECONDS}s" "http://127.0.0.1:$CHAOS_PORT/index.html" | grep Requests/sec
  after=$(awk '/VmHWM/ {print $2}' "/proc/$CHAOS_PID/status")
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$CHAOS_PID/status")
  echo "VmHWM before: ${before} kB, after: ${after} kB (current VmRSS ${rss} kB)"
fi
