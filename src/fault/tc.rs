//! The `tc` backend: netem and tbf as a root qdisc under the handle the
//! tool owns ([`HANDLE`]), so revert deletes exactly our qdisc and never a
//! qdisc someone else configured.

use std::time::Duration;

use super::cmd::Cmd;
use super::{FaultError, Netem};

/// The qdisc handle chaos owns ("CL" in hex, for chaos).
pub const HANDLE: &str = "4c43:";

/// `tc` arguments after `tc qdisc add dev DEV root handle 4c43:` for netem.
pub fn netem_args(n: &Netem) -> Result<Vec<String>, FaultError> {
    let mut args = vec!["netem".to_string()];
    if let Some(delay) = n.delay {
        args.push("delay".into());
        args.push(tc_time(delay));
        if let Some(jitter) = n.jitter {
            args.push(tc_time(jitter));
        }
    } else if n.jitter.is_some() || n.reorder.is_some() {
        return Err(FaultError::Invalid(
            "netem jitter and reorder need a delay (reordering works by delaying the \
             other packets)"
                .into(),
        ));
    }
    for (name, value) in [
        ("loss", n.loss),
        ("corrupt", n.corrupt),
        ("duplicate", n.duplicate),
        ("reorder", n.reorder),
    ] {
        if let Some(v) = value {
            args.push(name.into());
            args.push(tc_percent(v));
        }
    }
    if let Some(rate) = &n.rate {
        parse_rate(rate)?;
        args.push("rate".into());
        args.push(rate.clone());
    }
    if args.len() == 1 {
        return Err(FaultError::Invalid(
            "netem needs at least one of delay, loss, corrupt, duplicate, reorder, rate"
                .into(),
        ));
    }
    Ok(args)
}

/// tbf arguments for a bandwidth limit: burst is 10 ms worth of the rate
/// (at least one MTU-sized packet), queueing at most 50 ms.
pub fn tbf_args(rate: &str) -> Result<Vec<String>, FaultError> {
    let bits = parse_rate(rate)?;
    let burst = (bits / 8 / 100).max(1600);
    Ok(vec![
        "tbf".into(),
        "rate".into(),
        rate.to_string(),
        "burst".into(),
        format!("{burst}b"),
        "latency".into(),
        "50ms".into(),
    ])
}

/// The full add command.
pub fn add_cmd(netns: Option<&str>, dev: &str, qdisc_args: &[String]) -> Cmd {
    let mut args = vec!["qdisc", "add", "dev", dev, "root", "handle", HANDLE];
    args.extend(qdisc_args.iter().map(String::as_str));
    Cmd::new(netns, "tc", &args)
}

/// The delete command (only ever for our handle).
pub fn del_cmd(netns: Option<&str>, dev: &str) -> Cmd {
    Cmd::new(netns, "tc", &["qdisc", "del", "dev", dev, "root", "handle", HANDLE])
}

/// The listing used to check the root qdisc is still ours before deleting.
pub fn show_cmd(netns: Option<&str>, dev: &str) -> Cmd {
    Cmd::new(netns, "tc", &["qdisc", "show", "dev", dev])
}

/// True when `tc qdisc show` output has our handle as root qdisc of `kind`.
pub fn is_ours(show_output: &str, kind: &str) -> bool {
    let want = format!("qdisc {kind} {HANDLE} root");
    show_output.lines().any(|l| l.trim_start().starts_with(&want))
}

fn tc_time(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

fn tc_percent(fraction: f64) -> String {
    let s = format!("{:.4}", fraction * 100.0);
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

/// The fastest rate accepted: 1 Tbit/s. Above it tbf's burst (10 ms of
/// the rate) no longer fits tc's 32-bit size and `tc` refuses the qdisc,
/// which would surface only at apply time.
pub const MAX_RATE_BITS: f64 = 1e12;

/// Parses a tc rate (`"1mbit"`, `"500kbit"`, `"10mbps"`) into bits/s,
/// between 8 bit/s and [`MAX_RATE_BITS`].
pub fn parse_rate(text: &str) -> Result<u64, FaultError> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad_rate(text))?;
    let mult: f64 = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return Err(bad_rate(text)),
    };
    let bits = value * mult;
    if !(bits >= 8.0 && bits.is_finite()) {
        return Err(bad_rate(text));
    }
    if bits > MAX_RATE_BITS {
        return Err(FaultError::Invalid(format!(
            "rate {text:?} is above the 1tbit (1000gbit) maximum tc can shape"
        )));
    }
    Ok(bits as u64)
}

fn bad_rate(text: &str) -> FaultError {
    FaultError::Invalid(format!(
        "rate {text:?} is not a tc rate; write e.g. \"1mbit\", \"500kbit\" or \"2mbps\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netem() -> Netem {
        Netem {
            target: crate::target::TargetSelector::Iface {
                name: "v0".into(),
                netns: None,
            },
            selection: Default::default(),
            delay: None,
            jitter: None,
            loss: None,
            corrupt: None,
            duplicate: None,
            reorder: None,
            rate: None,
        }
    }

    #[test]
    fn builds_the_exact_netem_invocation_under_our_handle() {
        let n = Netem {
            delay: Some(Duration::from_millis(100)),
            jitter: Some(Duration::from_micros(2500)),
            loss: Some(0.1),
            corrupt: Some(0.001),
            duplicate: Some(0.02),
            reorder: Some(0.25),
            rate: Some("1mbit".into()),
            ..netem()
        };
        let cmd = add_cmd(Some("ns1"), "v0", &netem_args(&n).unwrap());
        assert_eq!(
            cmd.to_string(),
            "ip netns exec ns1 tc qdisc add dev v0 root handle 4c43: netem delay 100ms \
             2500us loss 10% corrupt 0.1% duplicate 2% reorder 25% rate 1mbit"
        );
    }

    #[test]
    fn revert_deletes_only_our_handle_and_only_when_it_is_still_ours() {
        assert_eq!(
            del_cmd(None, "eth1").argv.join(" "),
            "tc qdisc del dev eth1 root handle 4c43:"
        );
        let ours = "qdisc netem 4c43: root refcnt 2 limit 1000 delay 100ms\n";
        let theirs = "qdisc netem 8001: root refcnt 2 limit 1000\n";
        assert!(is_ours(ours, "netem"));
        assert!(!is_ours(theirs, "netem"));
        assert!(!is_ours(ours, "tbf"));
    }

    #[test]
    fn refuses_reorder_without_delay_and_an_empty_netem() {
        assert!(netem_args(&Netem { reorder: Some(0.1), ..netem() }).is_err());
        assert!(netem_args(&netem()).is_err());
    }

    #[test]
    fn tbf_gets_a_burst_of_ten_milliseconds_of_rate() {
        assert_eq!(
            tbf_args("8mbit").unwrap().join(" "),
            "tbf rate 8mbit burst 10000b latency 50ms"
        );
        assert_eq!(tbf_args("64kbit").unwrap()[4], "1600b");
        assert!(tbf_args("fast").is_err());
    }

    /// Issue 12 case 10: a rate tc cannot take is refused before apply.
    #[test]
    fn r12_10_an_overflowing_rate_is_refused() {
        assert!(parse_rate("1000gbit").is_ok());
        assert!(tbf_args("1000gbit").is_ok());
        for bad in ["10000gbit", "99999999999999999999gbit", "1e400bit", "0bit", "-1mbit"]
        {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
