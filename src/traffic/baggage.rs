//! The cohort in W3C Baggage (`baggage: chaos.cohort=experiment`), next to
//! `x-chaos-cohort`, so services instrumented with OpenTelemetry carry it
//! through their whole call graph without code changes (the propagators
//! forward baggage on every outgoing call).
//!
//! This module owns the one rule every hop applies ([`set_cohort`]): drop
//! every `chaos.cohort` member already present (a client must not pick its
//! cohort), keep every other member byte for byte, and append ours when the
//! request has a cohort — unless that would take the header past the W3C
//! limits (8192 bytes, 180 list-members), in which case ours is dropped,
//! never someone else's. Reading ([`cohort`]) is what sidecars do when
//! `x-chaos-cohort` did not survive a hop.
//!
//! Cost on the proxy's hot path: a request without a `baggage` header pays
//! one header lookup (plus one static insert when it has a cohort); one with
//! baggage but no `chaos.cohort` member pays a substring scan and, only when
//! we add our member, one copy of the value.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::cohort::Cohort;

/// The W3C Baggage header.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// Our baggage key.
pub const COHORT_KEY: &str = "chaos.cohort";
/// W3C Baggage: at most this many bytes in the whole baggage string.
pub const MAX_BYTES: usize = 8192;
/// W3C Baggage: at most this many list-members.
pub const MAX_MEMBERS: usize = 180;

/// What [`set_cohort`] did, for tests and debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The request carries `chaos.cohort` for its cohort.
    Added,
    /// No cohort: nothing added (a spoofed member, if any, was removed).
    Untouched,
    /// The cohort member would break a W3C limit: not added, the other
    /// members are forwarded as they came.
    Dropped,
}

/// Our list-member for `cohort` (`chaos.cohort=...`).
pub(crate) fn member(cohort: Cohort) -> &'static str {
    match cohort {
        Cohort::Control => "chaos.cohort=control",
        Cohort::Experiment => "chaos.cohort=experiment",
    }
}

/// The key of one list-member (`key OWS = OWS value *(; property)`).
fn key_of(member: &[u8]) -> &[u8] {
    let end = member.iter().position(|&b| b == b'=' || b == b';').unwrap_or(member.len());
    member[..end].trim_ascii()
}

/// The value of one list-member, without properties or whitespace.
fn value_of(member: &[u8]) -> Option<&[u8]> {
    let eq = member.iter().position(|&b| b == b'=')?;
    let rest = &member[eq + 1..];
    let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
    Some(rest[..end].trim_ascii())
}

fn is_ours(member: &[u8]) -> bool {
    key_of(member) == COHORT_KEY.as_bytes()
}

fn members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',')
}

fn count_members(value: &[u8]) -> usize {
    members(value).filter(|m| !m.trim_ascii().is_empty()).count()
}

/// A fast pre-check (SIMD substring search) so baggage without our key is
/// never split into members.
fn mentions_ours(value: &[u8]) -> bool {
    memchr::memmem::find(value, COHORT_KEY.as_bytes()).is_some()
}

/// The cohort in the request's baggage, if a `chaos.cohort` member names
/// one (the first such member wins).
pub fn cohort(headers: &HeaderMap) -> Option<Cohort> {
    headers.get_all(BAGGAGE).iter().find_map(|v| {
        if !mentions_ours(v.as_bytes()) {
            return None;
        }
        members(v.as_bytes())
            .find(|m| is_ours(m))
            .and_then(value_of)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(Cohort::parse)
    })
}

/// Rewrites the request's `baggage` for `cohort`: every `chaos.cohort`
/// member removed, every other member kept byte for byte, ours appended
/// within the W3C limits. Several `baggage` lines are joined into one
/// (equivalent per RFC 9110, and some propagators read only the first)
/// only when something has to change.
pub fn set_cohort(headers: &mut HeaderMap, cohort: Option<Cohort>) -> Applied {
    // One hash lookup; `all` re-iterates the same entry without another.
    let all = headers.get_all(BAGGAGE);
    let mut lines = all.iter();
    let Some(first) = lines.next() else {
        // The common case: no baggage at all.
        return match cohort {
            Some(c) => {
                headers.insert(BAGGAGE, HeaderValue::from_static(member(c)));
                Applied::Added
            }
            None => Applied::Untouched,
        };
    };
    let several = lines.next().is_some();
    let spoofed = all.iter().any(|v| mentions_ours(v.as_bytes()));
    if cohort.is_none() && !spoofed {
        return Applied::Untouched;
    }
    // Members to keep, in order, as the raw bytes they arrived as.
    let mut kept: Vec<u8> = Vec::with_capacity(first.len() + 32);
    if !spoofed && !several {
        kept.extend_from_slice(first.as_bytes());
    } else {
        for line in all.iter() {
            for m in members(line.as_bytes()) {
                if is_ours(m) || m.trim_ascii().is_empty() {
                    continue;
                }
                if !kept.is_empty() {
                    kept.push(b',');
                }
                kept.extend_from_slice(m);
            }
        }
    }
    let applied = match cohort {
        Some(c) => {
            let ours = member(c).as_bytes();
            let sep = usize::from(!kept.trim_ascii().is_empty());
            let fits = kept.len() + sep + ours.len() <= MAX_BYTES
                && count_members(&kept) < MAX_MEMBERS;
            if fits {
                if sep == 1 {
                    kept.push(b',');
                } else {
                    kept.clear();
                }
                kept.extend_from_slice(ours);
                Applied::Added
            } else {
                Applied::Dropped
            }
        }
        None => Applied::Untouched,
    };
    if kept.trim_ascii().is_empty() {
        headers.remove(BAGGAGE);
        return applied;
    }
    // Takes the buffer as is (no second copy); still validates the bytes.
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)) {
        Ok(v) => {
            headers.insert(BAGGAGE, v);
        }
        // Cannot happen: every byte came from valid header values or is
        // ours. Dropping the header is the safe answer if it ever did.
        Err(_) => {
            headers.remove(BAGGAGE);
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(BAGGAGE, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    fn baggage(h: &HeaderMap) -> Vec<String> {
        h.get_all(BAGGAGE).iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }

    #[test]
    fn adds_the_member_when_there_is_no_baggage() {
        let mut h = HeaderMap::new();
        assert_eq!(set_cohort(&mut h, Some(Cohort::Experiment)), Applied::Added);
        assert_eq!(baggage(&h), ["chaos.cohort=experiment"]);
        let mut h = HeaderMap::new();
        assert_eq!(set_cohort(&mut h, None), Applied::Untouched);
        assert!(h.is_empty());
    }

    #[test]
    fn appends_to_existing_baggage_without_touching_its_bytes() {
        let original = "userId=alice%2C42;prop=1 , isProduction=false";
        let mut h = with(&[original]);
        set_cohort(&mut h, Some(Cohort::Control));
        assert_eq!(baggage(&h), [format!("{original},chaos.cohort=control")]);
        assert_eq!(cohort(&h), Some(Cohort::Control));
    }

    #[test]
    fn leaves_baggage_without_our_member_alone_for_untouched_requests() {
        let mut h = with(&["a=1", "b=2"]);
        assert_eq!(set_cohort(&mut h, None), Applied::Untouched);
        assert_eq!(baggage(&h), ["a=1", "b=2"]);
    }

    #[test]
    fn replaces_a_spoofed_member_and_keeps_every_other() {
        let mut h = with(&["a=1, chaos.cohort = experiment;p=q ,b=%20x;y"]);
        set_cohort(&mut h, Some(Cohort::Control));
        assert_eq!(baggage(&h), ["a=1,b=%20x;y,chaos.cohort=control"]);

        let mut h = with(&["chaos.cohort=experiment", "k=v"]);
        assert_eq!(set_cohort(&mut h, None), Applied::Untouched);
        assert_eq!(baggage(&h), ["k=v"]);
        assert_eq!(cohort(&h), None);

        let mut h = with(&["chaos.cohort=experiment"]);
        set_cohort(&mut h, None);
        assert!(h.get(BAGGAGE).is_none(), "an emptied header is removed");
    }

    #[test]
    fn keeps_keys_that_only_look_like_ours() {
        let mut h = with(&["chaos.cohorts=1,xchaos.cohort=2,Chaos.Cohort=3"]);
        set_cohort(&mut h, Some(Cohort::Experiment));
        assert_eq!(
            baggage(&h),
            ["chaos.cohorts=1,xchaos.cohort=2,Chaos.Cohort=3,chaos.cohort=experiment"]
        );
    }

    #[test]
    fn joins_several_lines_only_when_adding() {
        let mut h = with(&["a=1", "b=2"]);
        set_cohort(&mut h, Some(Cohort::Experiment));
        assert_eq!(baggage(&h), ["a=1,b=2,chaos.cohort=experiment"]);
    }

    #[test]
    fn drops_our_member_rather_than_exceed_the_byte_limit() {
        let member = "chaos.cohort=experiment".len();
        // Exactly at the limit with ours: added.
        let fill = "k=".to_string() + &"v".repeat(MAX_BYTES - member - 1 - 2);
        let mut h = with(&[&fill]);
        assert_eq!(set_cohort(&mut h, Some(Cohort::Experiment)), Applied::Added);
        assert_eq!(h[BAGGAGE].len(), MAX_BYTES);
        // One byte more: dropped, theirs untouched.
        let fill = fill + "v";
        let mut h = with(&[&fill]);
        assert_eq!(set_cohort(&mut h, Some(Cohort::Experiment)), Applied::Dropped);
        assert_eq!(baggage(&h), [fill]);
    }

    #[test]
    fn drops_our_member_rather_than_exceed_the_member_limit() {
        let many = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>();
        let at_limit = many(MAX_MEMBERS - 1).join(",");
        let mut h = with(&[&at_limit]);
        assert_eq!(set_cohort(&mut h, Some(Cohort::Control)), Applied::Added);
        assert_eq!(count_members(h[BAGGAGE].as_bytes()), MAX_MEMBERS);

        let full = many(MAX_MEMBERS).join(",");
        let mut h = with(&[&full]);
        assert_eq!(set_cohort(&mut h, Some(Cohort::Control)), Applied::Dropped);
        assert_eq!(baggage(&h), std::slice::from_ref(&full));
        // A spoofed member among them still goes.
        let mut h = with(&[&format!("{full},chaos.cohort=experiment")]);
        assert_eq!(set_cohort(&mut h, Some(Cohort::Control)), Applied::Dropped);
        assert_eq!(baggage(&h), [full]);
    }

    #[test]
    fn reads_the_cohort_with_properties_and_whitespace() {
        for (v, want) in [
            ("chaos.cohort=experiment", Some(Cohort::Experiment)),
            ("a=1, chaos.cohort = control ;ttl=3", Some(Cohort::Control)),
            ("chaos.cohort=bogus", None),
            ("chaos.cohorts=experiment", None),
            ("", None),
        ] {
            assert_eq!(cohort(&with(&[v])), want, "{v:?}");
        }
    }
}
