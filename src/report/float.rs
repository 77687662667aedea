//! Serde adapters for floats in `result.json`. JSON has no NaN or
//! infinity, so a non-finite value is written as `null` and `null` reads
//! back as NaN (or +∞ for a histogram bucket's upper bound, where the only
//! non-finite value that makes sense is the overflow bucket).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `f64` field: non-finite ⇄ `null`.
pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

/// `f64` field: `null` reads as NaN.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// `Option<f64>` field: `None` and non-finite values are both `null`.
/// Default for fields added later: absent reads as "no value".
pub fn nan() -> f64 {
    f64::NAN
}

pub mod option {
    use super::*;

    /// Writes `null` for `None` and for non-finite values.
    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) if x.is_finite() => s.serialize_some(x),
            _ => s.serialize_none(),
        }
    }

    /// Reads `null` as `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<f64>::deserialize(d)
    }
}

/// Histogram buckets `[(upper_ms, count)]`: an infinite upper bound (the
/// overflow bucket) is written as `null` and read back as +∞.
pub mod buckets {
    use super::*;

    #[derive(Serialize)]
    struct Out(#[serde(with = "super::option")] Option<f64>, u64);

    /// Writes `[[upper|null, count], ...]`.
    pub fn serialize<S: Serializer>(v: &[(f64, u64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&(u, n)| Out(Some(u), n)))
    }

    /// Reads `[[upper|null, count], ...]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(f64, u64)>, D::Error> {
        let raw = Vec::<(Option<f64>, u64)>::deserialize(d)?;
        Ok(raw.into_iter().map(|(u, n)| (u.unwrap_or(f64::INFINITY), n)).collect())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug)]
    struct T {
        #[serde(with = "super")]
        a: f64,
        #[serde(with = "super::option")]
        b: Option<f64>,
        #[serde(with = "super::buckets")]
        h: Vec<(f64, u64)>,
    }

    #[test]
    fn writes_non_finite_floats_as_null_and_reads_them_back() {
        let t = T {
            a: f64::NAN,
            b: Some(f64::INFINITY),
            h: vec![(1.5, 2), (f64::INFINITY, 1)],
        };
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, r#"{"a":null,"b":null,"h":[[1.5,2],[null,1]]}"#);
        let back: T = serde_json::from_str(&s).unwrap();
        assert!(back.a.is_nan());
        assert_eq!(back.b, None);
        assert_eq!(back.h[1].0, f64::INFINITY);
    }

    #[test]
    fn keeps_finite_floats_exact() {
        let t = T { a: 0.1, b: Some(-2.5), h: vec![] };
        let back: T = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!((back.a, back.b), (0.1, Some(-2.5)));
    }
}
