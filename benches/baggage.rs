//! Cost of the cohort's W3C baggage handling on the proxy's hot path
//! (`chaos::traffic::baggage`), per request, on a realistic 4-header map.
//! A plain bench binary (no criterion): `cargo bench --bench baggage`.
//! Prints the best of 5 rounds of 2,000,000 calls per case; cases that must
//! reset the header first print the reset alone too, to subtract.

use std::hint::black_box;
use std::time::Instant;

use chaos::cohort::Cohort;
use chaos::traffic::baggage::{self, BAGGAGE};
use http::{HeaderMap, HeaderValue};

fn base() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-user-id", "user-42"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn with(v: &'static str) -> impl Fn() -> HeaderMap {
    move || {
        let mut h = base();
        h.insert(BAGGAGE, HeaderValue::from_static(v));
        h
    }
}

fn bench(name: &str, make: impl Fn() -> HeaderMap, f: impl Fn(&mut HeaderMap)) {
    const N: usize = 2_000_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut maps: Vec<HeaderMap> = (0..1000).map(|_| make()).collect();
        let t = Instant::now();
        for i in 0..N {
            f(black_box(&mut maps[i % 1000]));
        }
        best = best.min(t.elapsed().as_nanos() as f64 / N as f64);
        black_box(&maps);
    }
    println!("{name:50} {best:7.1} ns/request");
}

fn main() {
    const OTEL: &str = "userId=alice,sessionId=8f1c2a,isProduction=false";
    const SPOOF: &str = "userId=alice,chaos.cohort=experiment,isProduction=false";
    bench("no baggage, untouched", base, |h| {
        baggage::set_cohort(h, None);
    });
    bench("no baggage, cohort: insert ours (+remove)", base, |h| {
        h.remove(BAGGAGE);
        baggage::set_cohort(h, Some(Cohort::Experiment));
    });
    bench("  remove alone", base, |h| {
        h.remove(BAGGAGE);
    });
    bench("3-member baggage, untouched", with(OTEL), |h| {
        baggage::set_cohort(h, None);
    });
    bench("3-member baggage, cohort: append (+reset)", with(OTEL), |h| {
        h.insert(BAGGAGE, HeaderValue::from_static(OTEL));
        baggage::set_cohort(h, Some(Cohort::Control));
    });
    bench("spoofed member, cohort: rewrite (+reset)", with(SPOOF), |h| {
        h.insert(BAGGAGE, HeaderValue::from_static(SPOOF));
        baggage::set_cohort(h, Some(Cohort::Control));
    });
    bench("  reset alone", with(OTEL), |h| {
        h.insert(BAGGAGE, HeaderValue::from_static(OTEL));
    });
    bench("sidecar: read the cohort from 3-member baggage", with(SPOOF), |h| {
        black_box(baggage::cohort(h));
    });
}
