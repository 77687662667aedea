//! WebSocket load generator for `benches/proxy.sh` (not part of the
//! product): `ws_bench serve` runs an echo server on 127.0.0.1 and prints
//! its port; `ws_bench load ws://HOST:PORT/ CONNS SECONDS` keeps CONNS
//! connections each doing sequential 64-byte echo round trips for SECONDS
//! and prints `round_trips_per_sec p50_ms p99_ms`. One thread, like `wrk -t1`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.get(1).map(String::as_str) {
        Some("serve") => rt.block_on(serve()),
        Some("load") if args.len() == 5 => {
            let conns: usize = args[3].parse().expect("CONNS");
            let secs: u64 = args[4].parse().expect("SECONDS");
            rt.block_on(load(&args[2], conns, Duration::from_secs(secs)))
        }
        _ => {
            eprintln!("usage: ws_bench serve | ws_bench load URL CONNS SECONDS");
            std::process::exit(2);
        }
    }
}

async fn serve() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("{}", l.local_addr().expect("addr").port());
    loop {
        let Ok((s, _)) = l.accept().await else { continue };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn load(url: &str, conns: usize, dur: Duration) {
    let end = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) =
                tokio_tungstenite::connect_async(url).await.expect("connect");
            let payload = Message::binary(vec![b'x'; 64]);
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t0 = Instant::now();
                ws.send(payload.clone()).await.expect("send");
                match ws.next().await {
                    Some(Ok(_)) => lat.push(t0.elapsed()),
                    other => panic!("echo failed: {other:?}"),
                }
            }
            let _ = ws.close(None).await;
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort();
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN)
    };
    println!("{:.0} {:.3} {:.3}", all.len() as f64 / dur.as_secs_f64(), q(0.5), q(0.99));
}
