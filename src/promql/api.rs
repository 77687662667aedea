//! The JSON shapes of Prometheus' query API (`/api/v1/query`,
//! `/api/v1/query_range`) and their decoding into plain numbers.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Envelope of every API answer.
#[derive(Debug, Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<RawData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum RawData {
    Matrix(Vec<RawSeries>),
    Vector(Vec<RawSeries>),
    Scalar((f64, String)),
    String(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct RawSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    /// Range queries: `[[ts, "value"], ...]`.
    #[serde(default)]
    values: Vec<(f64, String)>,
    /// Instant queries: `[ts, "value"]`.
    #[serde(default)]
    value: Option<(f64, String)>,
}

/// The kind of a query result, named as Prometheus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Matrix,
    Vector,
    Scalar,
    String,
}

/// A decoded successful result.
#[derive(Debug)]
pub enum Data {
    Matrix(Vec<Series>),
    Vector(Vec<Series>),
    Scalar(f64),
    String,
}

impl Data {
    pub fn kind(&self) -> QueryKind {
        match self {
            Data::Matrix(_) => QueryKind::Matrix,
            Data::Vector(_) => QueryKind::Vector,
            Data::Scalar(_) => QueryKind::Scalar,
            Data::String => QueryKind::String,
        }
    }
}

/// One series: its labels and its (timestamp, value) points.
#[derive(Debug)]
pub struct Series {
    metric: BTreeMap<String, String>,
    points: Vec<(f64, f64)>,
}

impl Series {
    /// (timestamp, value) of the finite values in time order (NaN and ±Inf
    /// dropped: a ratio with a zero denominator is "no data", not a sample).
    pub fn finite_points(&self) -> Vec<(f64, f64)> {
        self.points.iter().copied().filter(|p| p.1.is_finite()).collect()
    }

    /// The single value of an instant-query series.
    pub fn value(&self) -> Option<f64> {
        self.points.first().map(|p| p.1)
    }

    /// `{a="1", b="2"}` for error messages.
    pub fn labels(&self) -> String {
        let inner: Vec<String> =
            self.metric.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!("{{{}}}", inner.join(", "))
    }
}

/// Prometheus' textual sample values: numbers, `NaN`, `+Inf`, `-Inf`.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s.parse().map_err(|_| format!("sample value {s:?} is not a number")),
    }
}

fn decode_series(raw: RawSeries) -> Result<Series, String> {
    let points = raw
        .values
        .into_iter()
        .chain(raw.value)
        .map(|(t, v)| Ok((t, parse_value(&v)?)))
        .collect::<Result<_, String>>()?;
    Ok(Series { metric: raw.metric, points })
}

/// What Prometheus said when a request failed (`errorType: error`), if the
/// body is its JSON error envelope.
pub fn error_message(body: &[u8]) -> Option<String> {
    let env: Envelope = serde_json::from_slice(body).ok()?;
    let error = env.error?;
    Some(match env.error_type {
        Some(t) => format!("{t}: {error}"),
        None => error,
    })
}

/// Decodes a 2xx answer; `Err` carries why it is not a usable result.
pub fn parse_success(body: &[u8]) -> Result<Data, String> {
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if env.status != "success" {
        return Err(format!(
            "status {:?}: {}",
            env.status,
            env.error.unwrap_or_else(|| "no error message".into())
        ));
    }
    let data = env.data.ok_or("no \"data\" in a successful answer")?;
    Ok(match data {
        RawData::Matrix(s) => {
            Data::Matrix(s.into_iter().map(decode_series).collect::<Result<_, _>>()?)
        }
        RawData::Vector(s) => {
            Data::Vector(s.into_iter().map(decode_series).collect::<Result<_, _>>()?)
        }
        RawData::Scalar((_, v)) => Data::Scalar(parse_value(&v)?),
        RawData::String(_) => Data::String,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_matrix_and_drops_non_finite_values() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"cohort":"control"},"values":[[1.0,"0.5"],[2.0,"NaN"],[3.0,"+Inf"],[4.0,"2"]]}
        ]}}"#;
        let Data::Matrix(s) = parse_success(body).unwrap() else {
            panic!("not a matrix")
        };
        assert_eq!(s[0].finite_points(), vec![(1.0, 0.5), (4.0, 2.0)]);
        assert_eq!(s[0].labels(), r#"{cohort="control"}"#);
    }

    #[test]
    fn decodes_vectors_and_scalars() {
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{},"value":[1.0,"3.25"]}]}}"#;
        let Data::Vector(s) = parse_success(v).unwrap() else { panic!("not a vector") };
        assert_eq!(s[0].value(), Some(3.25));
        let sc =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"7"]}}"#;
        assert!(matches!(parse_success(sc).unwrap(), Data::Scalar(v) if v == 7.0));
    }

    #[test]
    fn extracts_prometheus_error_messages() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#;
        assert_eq!(error_message(body).unwrap(), "bad_data: parse error at char 4");
        assert!(parse_success(body).unwrap_err().contains("parse error"));
    }

    #[test]
    fn rejects_values_that_are_not_numbers() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{},"value":[1.0,"fast"]}]}}"#;
        assert!(parse_success(body).unwrap_err().contains("fast"));
    }
}
