//! Loader tests: the model built from valid files, and a bounded fuzz run
//! proving that no input panics and every failure is a diagnostic.

use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::units::Tolerance;

fn load_str(src: &str) -> Loaded {
    load_bytes(Path::new("test.toml"), src.as_bytes())
}

const MINIMAL: &str = r#"
[experiment]
name = "m"
duration = "30s"

[traffic]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:9000"

[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+0.5pp"
"#;

#[test]
fn builds_a_model_with_documented_defaults_from_a_minimal_file() {
    let loaded = load_str(MINIMAL);
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let e = loaded.experiment.expect("valid");
    assert_eq!(e.meta.duration, Duration::from_secs(30));
    assert_eq!(e.meta.baseline, Duration::from_secs(5));
    assert_eq!(e.meta.alpha, 0.05);
    assert_eq!(e.meta.alpha_abort, 0.01);
    assert_eq!(e.traffic.cohort_key, CohortKeySpec::Header("x-user-id".into()));
    assert_eq!(e.traffic.experiment_fraction, 0.05);
    assert_eq!(e.traffic.control_fraction, 0.05);
    assert_eq!(e.hypotheses[0].tolerance, Tolerance::Absolute { points: 0.005 });
    assert!(e.faults.is_empty());
    assert_eq!(e.safety.max_targets, 3);
}

#[test]
fn the_load_section_takes_a_client_timeout_and_refuses_a_zero_one() {
    let with = |t: &str| {
        load_str(&format!("{MINIMAL}\n[load]\nrate = 5000\ntimeout = \"{t}\"\n"))
    };
    let e = with("750ms").experiment.expect("valid");
    let load = e.load.expect("[load]");
    assert_eq!(load.timeout, Some(Duration::from_millis(750)));
    let bad = with("0s");
    assert!(bad.experiment.is_none());
    assert!(
        bad.diagnostics
            .iter()
            .any(|d| d.path == "load.timeout" && d.message.contains("greater than zero")),
        "{:?}",
        bad.diagnostics
    );
    let none = load_str(&format!("{MINIMAL}\n[load]\nrate = 5000\n"));
    assert_eq!(none.experiment.and_then(|e| e.load).and_then(|l| l.timeout), None);
}

#[test]
fn load_keys_take_a_count_or_a_zipf_mix_and_refuse_a_bad_exponent() {
    let with = |k: &str| load_str(&format!("{MINIMAL}\n[load]\nrate = 50\nkeys = {k}\n"));
    let uniform = with("700").experiment.expect("valid").load.expect("[load]");
    assert_eq!((uniform.keys, uniform.key_zipf), (700, None));
    let zipf = with("{ count = 500, zipf = 1.1 }").experiment.expect("valid");
    let load = zipf.load.expect("[load]");
    assert_eq!((load.keys, load.key_zipf), (500, Some(1.1)));
    for (bad, path, what) in [
        ("{ count = 500, zipf = 0 }", "load.keys.zipf", "must be in (0, 5]"),
        ("{ count = 5000000, zipf = 1.1 }", "load.keys.count", "out of range"),
        ("{ zipf = 1.1 }", "load.keys.count", "missing required key"),
        ("{ count = 10, zipf = 1.1, skew = 1 }", "load.keys.skew", "skew"),
        ("\"many\"", "load.keys", "must be an integer"),
    ] {
        let l = with(bad);
        assert!(l.experiment.is_none(), "{bad}");
        assert!(
            l.diagnostics.iter().any(|d| d.path == path && d.message.contains(what)),
            "{bad}: {:?}",
            l.diagnostics
        );
    }
}

#[test]
fn reads_every_fault_kind_with_its_parameters() {
    let src = format!(
        "{MINIMAL}
[[region]]
name = \"us-east\"
targets = [\"netns:use1\"]

[[fault]]
kind = \"latency\"
delay = \"200ms\"
jitter = \"50ms\"
probability = \"20%\"

[[fault]]
kind = \"process-kill\"
target = \"name:payments\"
signal = \"TERM\"
grace = \"5s\"
start = \"10s\"

[[fault]]
kind = \"packet-loss\"
target = \"iface:veth0@use1\"
loss = \"10%\"
destinations = [\"10.0.0.0/24\"]
ports = [80]

[[fault]]
kind = \"region-outage\"
region = \"us-east\"
"
    );
    let loaded = load_str(&src);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let e = loaded.experiment.expect("valid");
    assert_eq!(
        e.faults[0].kind,
        FaultKind::Latency {
            delay: Duration::from_millis(200),
            jitter: Duration::from_millis(50)
        }
    );
    assert_eq!(e.faults[0].probability, 0.2);
    assert_eq!(
        e.faults[1].kind,
        FaultKind::ProcessKill {
            signal: "SIGTERM".into(),
            grace: Some(Duration::from_secs(5)),
            interval: None
        }
    );
    assert_eq!(e.faults[1].start, Duration::from_secs(10));
    assert_eq!(e.faults[1].id, "fault-2");
    assert_eq!(
        e.faults[2].kind,
        FaultKind::PacketLoss {
            loss: 0.1,
            destinations: vec!["10.0.0.0/24".into()],
            ports: vec![80]
        }
    );
    assert_eq!(
        e.faults[3].kind,
        FaultKind::RegionOutage {
            region: "us-east".into(),
            method: OutageMethod::Blackhole
        }
    );
}

#[test]
fn reports_all_problems_of_a_file_at_once() {
    let src = MINIMAL
        .replace("duration = \"30s\"", "duration = \"-1s\"\nbogus = 1")
        .replace("+0.5pp", "+5%");
    let loaded = load_str(&src);
    let errors: Vec<_> =
        loaded.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(loaded.experiment.is_none());
}

#[test]
fn rejects_oversized_input_without_parsing_it() {
    let big = vec![b'#'; MAX_FILE_BYTES + 1];
    let loaded = load_bytes(Path::new("big.toml"), &big);
    assert!(loaded.diagnostics[0].message.contains("1 MiB"));
}

#[test]
fn survives_deep_nesting() {
    let deep = format!("a = {}1{}", "[".repeat(5000), "]".repeat(5000));
    let loaded = load_str(&deep);
    assert!(loaded.has_errors());
    let deep_tables = format!("a = {}{}", "{b = ".repeat(3000), "}".repeat(3000));
    assert!(load_str(&deep_tables).has_errors());
}

/// Mutations that keep most of a valid file, so the fuzzer reaches the
/// validator and not only the TOML parser.
fn mutate(rng: &mut ChaCha8Rng, base: &[u8]) -> Vec<u8> {
    const TOKENS: &[&str] = &[
        "=",
        "[",
        "]",
        "[[",
        "]]",
        "\"",
        "'",
        "\n",
        "{",
        "}",
        ",",
        "#",
        "+10%",
        "-5%",
        "0.5pp",
        "250ms",
        "${X}",
        "${CHAOS_NOPE:-1}",
        "kind",
        "target",
        "pid:1",
        "name:(",
        "\u{0}",
        "é",
        "1e309",
        "-0",
        "nan",
        "inf",
        "true",
        "[fault]",
        "[[hypothesis]]",
        "metric = \"promql\"",
        // Hostile values (issue 12): names that could inject nft syntax,
        // refused pids, huge numbers, overflowing rates, bad load fields.
        "iface:q\\\"drop;drop;#@ns",
        "iface:..",
        "iface:a\\nb",
        "iface:a\\u0000b",
        "iface:eth*",
        "netns:-x",
        "pid:2",
        "percent = \"0%\"",
        "rate = \"99999999999999999999gbit\"",
        "rate = \"1e400bit\"",
        "count = 99999999999999999999",
        "99999999999999999999",
        "key_header = \"x y\"",
        "path = \"/a b\"",
        "targets = []",
        "admin = \"0.0.0.0:1\"",
        "\u{feff}",
        "\u{202e}",
    ];
    let mut v = base.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        let pos = if v.is_empty() { 0 } else { rng.gen_range(0..v.len()) };
        match rng.gen_range(0..6) {
            0 if !v.is_empty() => v[pos] = rng.gen(),
            1 => {
                let t = TOKENS[rng.gen_range(0..TOKENS.len())].as_bytes();
                v.splice(pos..pos, t.iter().copied());
            }
            2 if !v.is_empty() => {
                let end = (pos + rng.gen_range(1..40)).min(v.len());
                v.drain(pos..end);
            }
            3 => v.truncate(pos),
            4 if !v.is_empty() => {
                let end = (pos + rng.gen_range(1..80)).min(v.len());
                let chunk = v[pos..end].to_vec();
                let at = rng.gen_range(0..v.len());
                v.splice(at..at, chunk);
            }
            5 => v.extend((0..rng.gen_range(1..30)).map(|_| rng.gen::<u8>())),
            _ => {
                // Deep nesting and invalid UTF-8 at a random place.
                let n = rng.gen_range(1..600);
                let chunk: Vec<u8> = if rng.gen() {
                    "[".repeat(n).into_bytes()
                } else {
                    vec![0xff, 0xc3, 0x28, 0xe2, 0x82][..rng.gen_range(1..5)].to_vec()
                };
                v.splice(pos..pos, chunk);
            }
        }
    }
    v
}

/// An accepted experiment holds only names the fault engine can use
/// verbatim: every interface and namespace passes the strict checks, and
/// every network fault builds an nft ruleset.
fn assert_names_are_safe(e: &Experiment, case: usize) {
    use crate::target::{check_iface, check_netns, NetTarget, TargetSelector};
    let mut sels: Vec<&TargetSelector> =
        e.faults.iter().filter_map(|f| f.target.as_ref()).collect();
    sels.extend(e.regions.iter().flat_map(|r| r.targets.iter()));
    for sel in sels {
        match sel {
            TargetSelector::Iface { name, netns } => {
                assert!(check_iface(name).is_ok(), "case {case}: {sel}");
                if let Some(ns) = netns {
                    assert!(check_netns(ns).is_ok(), "case {case}: {sel}");
                }
                let t = NetTarget { netns: netns.clone(), iface: Some(name.clone()) };
                let r = crate::fault::nft::ruleset(
                    "chaos_fuzz_0",
                    &t,
                    &Default::default(),
                    crate::fault::nft::Verdict::Drop,
                );
                assert!(r.is_ok(), "case {case}: {sel}: {r:?}");
            }
            TargetSelector::Netns(ns) => {
                assert!(check_netns(ns).is_ok(), "case {case}: {sel}")
            }
            TargetSelector::Pid(p) => assert!(*p > 2, "case {case}: {sel}"),
            _ => {}
        }
    }
}

/// A file with every kind of name, for the fuzzer to corrupt.
const NETWORK: &str = r#"
[experiment]
name = "n"
duration = "30s"

[traffic]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:9000"

[load]
path = "/checkout"
key_header = "x-user-id"

[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+0.5pp"

[[region]]
name = "eu"
targets = ["netns:eu-1", "iface:veth0@eu-2", "name:api-eu"]

[[fault]]
kind = "blackhole"
target = "iface:veth1@blue"

[[fault]]
kind = "bandwidth"
target = "iface:eth0"
rate = "1mbit"

[[fault]]
kind = "process-pause"
target = "pid:4242"
percent = "50%"
"#;

/// Issue 12 cases 8 and 10 in experiment files: each hostile value is
/// refused with FILE:LINE:COL pointing at the value, plus a hint.
#[test]
fn r12_8_and_10_hostile_values_are_refused_at_their_line_and_column() {
    assert!(
        load_str(NETWORK).experiment.is_some(),
        "{:?}",
        load_str(NETWORK).diagnostics
    );
    let cases: &[(&str, &str, &str)] = &[
        ("\"iface:veth1@blue\"", "\"iface:..\"", "interface name"),
        ("\"iface:veth1@blue\"", "\"iface:.\"", "interface name"),
        ("\"iface:veth1@blue\"", "\"iface:a\\nb\"", "interface name"),
        ("\"iface:veth1@blue\"", r#""iface:q\"drop;drop;#@ns""#, "interface name"),
        ("\"iface:veth1@blue\"", "\"iface:eth*\"", "interface name"),
        ("\"iface:veth0@eu-2\"", "\"iface:x@a\\u0000\"", "namespace"),
        ("\"pid:4242\"", "\"pid:1\"", "pid 1"),
        ("\"pid:4242\"", "\"pid:2\"", "kthreadd"),
        ("\"50%\"", "\"0%\"", "0%"),
        ("\"1mbit\"", "\"99999999999999999999gbit\"", "rate"),
        ("\"1mbit\"", "\"10000gbit\"", "rate"),
        ("[\"netns:eu-1\", \"iface:veth0@eu-2\", \"name:api-eu\"]", "[]", "no targets"),
        ("\"/checkout\"", "\"/check out\"", "request path"),
        ("\"/checkout\"", "\"checkout\"", "request path"),
        ("\"x-user-id\"", "\"x user\"", "header name"),
    ];
    for (from, to, want) in cases {
        assert!(NETWORK.contains(from), "{from}");
        let src = NETWORK.replacen(from, to, 1);
        let loaded = load_str(&src);
        assert!(loaded.experiment.is_none(), "{to} was accepted");
        let d =
            loaded.diagnostics.iter().find(|d| d.message.contains(want)).unwrap_or_else(
                || panic!("{to}: no {want:?} in {:?}", loaded.diagnostics),
            );
        let offset = src.find(to).expect("replaced");
        let line = src[..offset].matches('\n').count() + 1;
        let col = offset - src[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        assert_eq!((d.line, d.column), (line, col), "{to}: {d}");
        assert!(d.to_string().starts_with("test.toml:"), "{d}");
        assert!(!d.hint.is_empty(), "{d}");
    }
}

/// Issue 12 case 10: the runner's own pid and ancestors are refused at
/// validation, like pid 1.
#[test]
fn r12_10_the_validating_process_and_its_ancestors_are_refused() {
    let me = std::process::id();
    let src = NETWORK.replacen("pid:4242", &format!("pid:{me}"), 1);
    let loaded = load_str(&src);
    assert!(loaded.experiment.is_none());
    assert!(
        loaded.diagnostics.iter().any(|d| d.message.contains("itself")),
        "{:?}",
        loaded.diagnostics
    );
}

#[test]
fn never_panics_and_every_failure_is_a_located_diagnostic() {
    // Bounded in cases and in time (a debug build on a busy CI machine
    // must still finish in seconds).
    let started = std::time::Instant::now();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut bases: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("experiments dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    bases.push(MINIMAL.as_bytes().to_vec());
    bases.push(NETWORK.as_bytes().to_vec());
    assert!(bases.len() >= 4, "example experiments missing");
    let mut rng = ChaCha8Rng::seed_from_u64(0xC4A05);
    let mut accepted = 0;
    const CASES: usize = 10_000;
    let mut ran = 0;
    for case in 0..CASES {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        ran += 1;
        let input = if case % 10 == 0 {
            (0..rng.gen_range(0..400)).map(|_| rng.gen::<u8>()).collect()
        } else {
            let base = &bases[case % bases.len()];
            mutate(&mut rng, base)
        };
        let result =
            std::panic::catch_unwind(|| load_bytes(Path::new("fuzz.toml"), &input));
        let loaded = match result {
            Ok(l) => l,
            Err(_) => panic!(
                "loader panicked on case {case}: {:?}",
                String::from_utf8_lossy(&input)
            ),
        };
        if loaded.has_errors() {
            assert!(loaded.experiment.is_none());
            for d in &loaded.diagnostics {
                assert!(d.line >= 1 && d.column >= 1, "case {case}: {d:?}");
                assert!(
                    !d.message.is_empty() && !d.hint.is_empty(),
                    "case {case}: {d:?}"
                );
            }
        } else {
            let e = loaded.experiment.as_ref();
            assert!(e.is_some(), "case {case}: no errors but no experiment");
            if let Some(e) = e {
                assert_names_are_safe(e, case);
            }
            accepted += 1;
        }
    }
    // Some mutations (e.g. in comments) keep a file valid: the fuzzer must
    // reach both outcomes or it is not exercising the validator.
    assert!(ran >= 1000, "only {ran} cases in the time bound");
    assert!(accepted > 50 && accepted < ran - ran / 10, "accepted {accepted} of {ran}");
}

/// Issue 13 items 3, 9, 10: the edge proxy's limits in `[traffic]`, and
/// bad values located at their line and column.
#[test]
fn traffic_takes_timeouts_header_limit_and_forwarding_rules() {
    let keys = "client_header_timeout = \"5s\"\nidle_timeout = \"20s\"\n\
                request_body_timeout = \"7s\"\nresponse_body_timeout = \"9s\"\n\
                max_header_bytes = 16384\nforwarded = \"replace\"\n\
                trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n";
    let src = MINIMAL.replace(
        "upstream = \"http://127.0.0.1:9000\"\n",
        &format!("upstream = \"h2c://127.0.0.1:9000\"\n{keys}"),
    );
    let loaded = load_str(&src);
    let e = loaded.experiment.unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    let t = &e.traffic;
    assert_eq!(t.timeouts.client_header, Duration::from_secs(5));
    assert_eq!(t.timeouts.idle, Duration::from_secs(20));
    assert_eq!(t.timeouts.request_body, Duration::from_secs(7));
    assert_eq!(t.timeouts.response_body, Duration::from_secs(9));
    assert_eq!(t.max_header_bytes, 16384);
    assert_eq!(t.forwarded, crate::traffic::ForwardedMode::Replace);
    assert_eq!(t.trusted_proxies.len(), 2);
    let d = load_str(MINIMAL).experiment.expect("valid").traffic;
    assert_eq!(d.timeouts, crate::traffic::Timeouts::default());
    assert_eq!(d.forwarded, crate::traffic::ForwardedMode::Append);

    for (from, to, want) in [
        ("\"20s\"", "\"0s\"", "idle_timeout"),
        ("\"9s\"", "\"soon\"", "response_body_timeout"),
        ("16384", "100", "out of range"),
        ("\"replace\"", "\"sometimes\"", "forwarded mode"),
        ("\"::1\"", "\"10.0.0.0/99\"", "trusted proxy"),
    ] {
        let bad = src.replacen(from, to, 1);
        let loaded = load_str(&bad);
        assert!(loaded.experiment.is_none(), "{to} was accepted");
        let d = loaded
            .diagnostics
            .iter()
            .find(|d| d.message.contains(want) || d.path.contains(want))
            .unwrap_or_else(|| panic!("{to}: no {want:?} in {:?}", loaded.diagnostics));
        let offset = bad.find(to).expect("replaced");
        let line = bad[..offset].matches('\n').count() + 1;
        let col = offset - bad[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        assert_eq!((d.line, d.column), (line, col), "{to}: {d}");
    }
}

const TWO_HOSTS: &str = r#"
[[host]]
name = "pay-1"
address = "192.0.2.11"
labels = { role = "payments" }

[[host]]
name = "pay-2"
address = "192.0.2.12"
labels = { role = "payments" }

[[fault]]
name = "pause"
kind = "process-pause"
target = "name:payments@hosts:role=payments"
duration = "5s"
"#;

#[test]
fn host_blast_radius_defaults_to_unlimited_and_parses_from_safety() {
    let e = load_str(MINIMAL).experiment.expect("valid");
    assert_eq!((e.safety.max_hosts, e.safety.max_host_fraction), (None, None));
    let src = format!("{MINIMAL}\n[safety]\nmax_hosts = 4\nmax_host_percent = \"50%\"\n");
    let e = load_str(&src).experiment.expect("valid");
    assert_eq!(e.safety.max_hosts, Some(4));
    assert_eq!(e.safety.max_host_fraction, Some(0.5));
}

#[test]
fn bad_host_limits_are_refused_at_their_line_and_column() {
    for (value, want) in [
        ("max_hosts = 0", "test.toml:16:13: error"),
        ("max_hosts = \"two\"", "test.toml:16:13: error"),
        ("max_host_percent = \"0%\"", "test.toml:16:20: error"),
        ("max_host_percent = \"150%\"", "test.toml:16:20: error"),
    ] {
        let loaded = load_str(&format!("{MINIMAL}\n[safety]\n{value}\n"));
        assert!(loaded.experiment.is_none(), "{value} refused");
        let text = loaded.diagnostics[0].to_string();
        assert!(text.starts_with(want), "{value}: {text}");
        assert!(text.contains("hint:"), "{value}: {text}");
    }
}

#[test]
fn a_host_fault_beyond_max_hosts_is_refused_when_the_file_has_its_hosts() {
    let fits = load_str(&format!("{MINIMAL}{TWO_HOSTS}\n[safety]\nmax_hosts = 2\n"));
    assert!(fits.experiment.is_some(), "{:?}", fits.diagnostics);
    for limit in ["max_hosts = 1", "max_host_percent = \"50%\""] {
        let loaded = load_str(&format!("{MINIMAL}{TWO_HOSTS}\n[safety]\n{limit}\n"));
        assert!(loaded.experiment.is_none(), "{limit}");
        let text = loaded.diagnostics[0].to_string();
        assert!(text.contains("2 of 2 hosts selected"), "{text}");
        assert!(text.contains("fault[0].target") || text.contains("error"), "{text}");
        assert!(text.contains("raise [safety] max_hosts"), "{text}");
    }
}
