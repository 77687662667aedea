//! One journal line on disk and the tolerant reader of a whole file.
//!
//! A line is the JSON of an [`Entry`] with a checksum appended as its last
//! field: `{...,"sum":"<16 hex digits>"}`, the FNV-1a 64 of the JSON
//! without that field. A changed byte, a line cut in half or two lines run
//! together therefore never parse as a valid record. Journals written
//! before checksums existed (no line carries one) are still read, record
//! by record, if each line is exactly the canonical JSON chaos wrote;
//! once any line of a file verifies, every line must carry a checksum.
//!
//! Reading never fails on content: a line that does not verify is
//! returned as [`Damaged`] (with its raw text, for the operator), and the
//! caller decides what that means. It is never acted upon.

use super::Entry;

/// The suffix every checksummed line ends with, minus the 16 hex digits.
const SUM_KEY: &str = ",\"sum\":\"";
/// `,"sum":"` + 16 hex digits + `"}`.
const SUM_SUFFIX_LEN: usize = SUM_KEY.len() + 16 + 2;
/// How much of a damaged line is shown.
const RAW_SHOWN: usize = 300;

/// A line that could not be verified or parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// 1-based line number.
    pub line: usize,
    /// The line as text (lossy, control characters escaped, shortened).
    pub raw: String,
    /// Why it was rejected.
    pub why: String,
}

/// Everything read from one journal file.
#[derive(Debug, Default)]
pub struct Contents {
    /// The verified records, in file order.
    pub entries: Vec<Entry>,
    /// Lines that are not verified records; never acted upon.
    pub damaged: Vec<Damaged>,
}

/// FNV-1a, 64 bit: tiny, dependency-free and plenty to detect accidental
/// damage (it is not meant to resist someone forging records: whoever can
/// write the journal can run `chaos` anyway).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The on-disk line for `entry`, newline included.
pub fn encode(entry: &Entry) -> String {
    let json = serde_json::to_string(entry).expect("journal entries serialise");
    let sum = fnv1a64(json.as_bytes());
    // The JSON of a tagged enum is always an object: `{...}`.
    let body = &json[..json.len() - 1];
    format!("{body}{SUM_KEY}{sum:016x}\"}}\n")
}

/// The JSON without its checksum when `line` carries a valid one;
/// `Err(why)` when it carries one that does not match; `Ok(None)` when it
/// has none at all.
fn verify(line: &str) -> Result<Option<String>, String> {
    if line.len() < SUM_SUFFIX_LEN || !line.ends_with("\"}") {
        return Ok(None);
    }
    let cut = line.len() - SUM_SUFFIX_LEN;
    let Some(tail) = line.get(cut..) else { return Ok(None) };
    let Some(hex) = tail.strip_prefix(SUM_KEY) else { return Ok(None) };
    let hex = &hex[..16];
    // Exactly as written: lowercase digits only, so "A" for "a" or "+" for
    // "0" is a change like any other.
    let canonical = hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let want = match u64::from_str_radix(hex, 16) {
        Ok(v) if canonical => v,
        _ => return Err("its checksum is not 16 lowercase hex digits".into()),
    };
    let json = format!("{}}}", &line[..cut]);
    if fnv1a64(json.as_bytes()) != want {
        return Err("checksum mismatch (the record was changed or cut)".into());
    }
    Ok(Some(json))
}

fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() > RAW_SHOWN {
        let cut: String = escaped.chars().take(RAW_SHOWN).collect();
        format!("{cut}… ({} bytes)", bytes.len())
    } else {
        escaped
    }
}

/// Splits and verifies a whole journal file's bytes.
pub fn decode(bytes: &[u8]) -> Contents {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // `split` yields an empty piece after a final newline; anything else
    // there is a last line whose write never finished.
    let torn = lines.last().is_some_and(|l| !l.is_empty());
    if !torn {
        lines.pop();
    }
    let last = lines.len();
    let checksummed = lines.iter().any(|l| {
        std::str::from_utf8(l).ok().is_some_and(|t| matches!(verify(t), Ok(Some(_))))
    });
    let mut out = Contents::default();
    for (i, raw) in lines.iter().enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let damaged = |why: String| Damaged { line: i + 1, raw: shown(raw), why };
        if torn && i + 1 == last {
            out.damaged.push(damaged(
                "torn last line (no newline: its write never finished)".into(),
            ));
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            out.damaged.push(damaged("not UTF-8".into()));
            continue;
        };
        let json = match verify(text) {
            Ok(Some(json)) => json,
            Ok(None) if checksummed => {
                out.damaged.push(damaged(
                    "no checksum, but the rest of this journal has them".into(),
                ));
                continue;
            }
            Ok(None) => {
                // A journal from before checksums: accept only the exact
                // text serde wrote (canonical JSON), so at least anything
                // that does not round-trip (a renamed key, an extra field,
                // stray bytes) is caught.
                match serde_json::from_str::<Entry>(text) {
                    Ok(entry)
                        if serde_json::to_string(&entry).is_ok_and(|t| t == text) =>
                    {
                        out.entries.push(entry);
                    }
                    Ok(_) => out.damaged.push(damaged(
                        "not a record as chaos writes it (changed or damaged)".into(),
                    )),
                    Err(e) => {
                        out.damaged.push(damaged(format!("not a journal record: {e}")))
                    }
                }
                continue;
            }
            Err(why) => {
                out.damaged.push(damaged(why));
                continue;
            }
        };
        match serde_json::from_str::<Entry>(&json) {
            Ok(entry) => out.entries.push(entry),
            Err(e) => out.damaged.push(damaged(format!("not a journal record: {e}"))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::RevertAction;

    fn apply() -> Entry {
        Entry::Apply {
            id: 3,
            fault: "nftables table inet chaos_x_0 on netns:a".into(),
            lock: Some("net-a".into()),
            revert: RevertAction::DeleteNftTable {
                netns: Some("a".into()),
                family: "inet".into(),
                table: "chaos_x_0".into(),
            },
        }
    }

    #[test]
    fn a_record_round_trips_with_its_checksum() {
        let line = encode(&apply());
        assert!(line.ends_with("\"}\n") && line.contains(",\"sum\":\""), "{line}");
        let c = decode(line.as_bytes());
        assert!(c.damaged.is_empty(), "{:?}", c.damaged);
        assert_eq!(c.entries.len(), 1);
    }

    #[test]
    fn every_single_byte_change_of_a_record_is_detected() {
        let line = encode(&apply());
        let body = line.trim_end().as_bytes();
        for i in 0..body.len() {
            let mut changed = body.to_vec();
            changed[i] ^= 0x01;
            changed.push(b'\n');
            let c = decode(&changed);
            assert!(c.entries.is_empty(), "flip at {i} accepted: {:?}", c.entries);
            assert_eq!(c.damaged.len(), 1, "flip at {i}");
        }
    }

    #[test]
    fn a_checksum_in_another_case_or_with_a_sign_does_not_verify() {
        let line = encode(&apply());
        let cut = line.len() - 3 - 16;
        let mut upper = line.clone();
        upper.replace_range(cut.., &line[cut..].to_ascii_uppercase());
        let mut plus = line.clone();
        plus.replace_range(cut..cut + 1, "+");
        for changed in [upper, plus] {
            if changed != line {
                assert!(decode(changed.as_bytes()).entries.is_empty(), "{changed}");
            }
        }
    }

    #[test]
    fn a_legacy_journal_without_checksums_is_still_read() {
        let legacy = "{\"type\":\"apply\",\"id\":0,\"fault\":\"f\",\"lock\":null,\
                      \"revert\":{\"action\":\"continue\",\"pid\":7,\"starttime\":1}}\n\
                      {\"type\":\"reverted\",\"id\":0}\n";
        let c = decode(legacy.as_bytes());
        assert!(c.damaged.is_empty(), "{:?}", c.damaged);
        assert_eq!(c.entries.len(), 2);
    }

    #[test]
    fn a_line_without_checksum_in_a_checksummed_journal_is_damaged() {
        let mut text = encode(&apply());
        text.push_str("{\"type\":\"reverted\",\"id\":3}\n");
        let c = decode(text.as_bytes());
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.damaged.len(), 1);
        assert_eq!(c.damaged[0].line, 2);
    }

    #[test]
    fn a_torn_tail_and_invalid_utf8_are_reported_with_their_raw_text() {
        let mut bytes = encode(&apply()).into_bytes();
        bytes.extend_from_slice(b"{\"type\":\"apply\",\"fault\":\"pause pid 9 (caf\xc3");
        let c = decode(&bytes);
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.damaged.len(), 1);
        assert!(c.damaged[0].why.contains("torn"), "{:?}", c.damaged);
        assert!(c.damaged[0].raw.contains("pause pid 9"), "{:?}", c.damaged);
        let c = decode(b"\xff\xfe\n");
        assert_eq!(c.damaged[0].why, "not UTF-8");
    }
}
