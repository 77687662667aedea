//! A tiny SVG line-chart builder for the HTML report: linear or log axes
//! with "nice" ticks, line series that break at missing (non-finite)
//! points, shaded bands (fault windows) and marker lines (abort, p99).
//! No ids, scripts or external references, so many charts can share a
//! page and the page stays self-contained.

use std::fmt::Write as _;

use super::junit::esc;

/// Plot area margins inside the SVG (left, right, top, bottom).
const MARGIN: (f64, f64, f64, f64) = (54.0, 14.0, 14.0, 38.0);

/// One axis: range, scale and label.
pub struct Axis {
    pub min: f64,
    pub max: f64,
    pub log: bool,
    pub label: String,
}

impl Axis {
    /// A linear axis from 0 to a nice value above `max` (at least `floor`).
    pub fn zero_to(max: f64, floor: f64, label: &str) -> Axis {
        let m = if max.is_finite() { max.max(floor) } else { floor };
        let step = nice_step(m * 1.08 / 4.0);
        Axis {
            min: 0.0,
            max: (m * 1.08 / step).ceil() * step,
            log: false,
            label: label.into(),
        }
    }

    /// A linear axis over exactly [min, max] (a time axis: the data ends
    /// where the run ended, no padding).
    pub fn exact(min: f64, max: f64, label: &str) -> Axis {
        let max = if max.is_finite() && max > min { max } else { min + 1.0 };
        Axis { min, max, log: false, label: label.into() }
    }

    /// A log axis covering [lo, hi] snapped to 1-2-5 decades.
    pub fn log_between(lo: f64, hi: f64, label: &str) -> Axis {
        let lo = if lo.is_finite() && lo > 0.0 { lo } else { 1.0 };
        let hi = if hi.is_finite() && hi > lo { hi } else { lo * 10.0 };
        let snap_down = |v: f64| {
            let d = 10f64.powf(v.log10().floor());
            [5.0, 2.0, 1.0].iter().map(|m| m * d).find(|&t| t <= v).unwrap_or(d)
        };
        let snap_up = |v: f64| {
            let d = 10f64.powf(v.log10().floor());
            [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * d)
                .find(|&t| t >= v)
                .unwrap_or(10.0 * d)
        };
        Axis { min: snap_down(lo), max: snap_up(hi), log: true, label: label.into() }
    }

    fn frac(&self, v: f64) -> f64 {
        if self.log {
            let (a, b) = (self.min.ln(), self.max.ln());
            (v.max(self.min * 1e-3).ln() - a) / (b - a)
        } else {
            (v - self.min) / (self.max - self.min)
        }
    }

    pub fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut out = Vec::new();
            let mut d = 10f64.powf(self.min.log10().floor());
            while d <= self.max * 1.0001 {
                for m in [1.0, 2.0, 5.0] {
                    let t = m * d;
                    if t >= self.min * 0.9999 && t <= self.max * 1.0001 {
                        out.push(t);
                    }
                }
                d *= 10.0;
            }
            out
        } else {
            let step = nice_step((self.max - self.min) / 5.0);
            let mut t = (self.min / step).ceil() * step;
            let mut out = Vec::new();
            while t <= self.max + step * 1e-9 && out.len() < 20 {
                out.push(t);
                t += step;
            }
            out
        }
    }
}

/// A 1-2-5 step at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let d = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * d)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * d)
}

/// Formats a tick value compactly (`0.5`, `20`, `1k`).
pub fn tick_label(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let k = v / 1000.0;
        if k.fract().abs() < 1e-9 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if (v * 10.0).fract().abs() < 1e-9 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A polyline; non-finite y values leave a gap.
pub struct Series {
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    pub width: f64,
}

/// A shaded x-range with a label at the top (a fault's active window).
pub struct Band {
    pub x0: f64,
    pub x1: f64,
    pub label: String,
    pub fill: &'static str,
}

/// A dashed vertical (x) or horizontal (y) reference line.
pub struct Rule {
    pub at: f64,
    pub vertical: bool,
    pub label: String,
    pub color: &'static str,
}

/// A line chart.
pub struct Chart {
    pub width: f64,
    pub height: f64,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
    pub bands: Vec<Band>,
    pub rules: Vec<Rule>,
}

impl Chart {
    fn px(&self, x: f64) -> f64 {
        let (l, r, _, _) = MARGIN;
        l + self.x.frac(x).clamp(0.0, 1.0) * (self.width - l - r)
    }

    fn py(&self, y: f64) -> f64 {
        let (_, _, t, b) = MARGIN;
        let h = self.height - t - b;
        t + (1.0 - self.y.frac(y).clamp(0.0, 1.0)) * h
    }

    /// The chart as an inline `<svg>` element.
    pub fn render(&self) -> String {
        let (l, r, t, b) = MARGIN;
        let (w, h) = (self.width, self.height);
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\" \
             role=\"img\" preserveAspectRatio=\"xMidYMid meet\">"
        );
        for band in self.bands.iter().filter(|b| b.x0.is_finite() && b.x1.is_finite()) {
            let (x0, x1) = (self.px(band.x0), self.px(band.x1));
            let _ = write!(
                s,
                "<rect x=\"{x0:.1}\" y=\"{t}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" class=\"band\">{}</text>",
                (x1 - x0).max(1.0),
                h - t - b,
                band.fill,
                x0 + 4.0,
                t + 12.0,
                esc(&band.label)
            );
        }
        for tick in self.y.ticks() {
            let y = self.py(tick);
            let _ = write!(
                s,
                "<line x1=\"{l}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=\"grid\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
                w - r,
                l - 6.0,
                y + 4.0,
                tick_label(tick)
            );
        }
        for tick in self.x.ticks() {
            let x = self.px(tick);
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{t}\" y2=\"{:.1}\" class=\"grid\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
                h - b,
                h - b + 15.0,
                tick_label(tick)
            );
        }
        let _ = write!(
            s,
            "<rect x=\"{l}\" y=\"{t}\" width=\"{:.1}\" height=\"{:.1}\" class=\"frame\"/>",
            w - l - r,
            h - t - b
        );
        for rule in self.rules.iter().filter(|r| r.at.is_finite()) {
            let (x1, x2, y1, y2, tx, ty, anchor) = if rule.vertical {
                let x = self.px(rule.at);
                (x, x, t, h - b, x - 4.0, t + 26.0, "end")
            } else {
                let y = self.py(rule.at);
                (l, w - r, y, y, l + 6.0, y - 5.0, "start")
            };
            let _ = write!(
                s,
                "<line x1=\"{x1:.1}\" x2=\"{x2:.1}\" y1=\"{y1:.1}\" y2=\"{y2:.1}\" \
                 stroke=\"{c}\" stroke-width=\"1.5\" stroke-dasharray=\"5 4\"/>\
                 <text x=\"{tx:.1}\" y=\"{ty:.1}\" fill=\"{c}\" class=\"rule\" \
                 text-anchor=\"{anchor}\">{}</text>",
                esc(&rule.label),
                c = rule.color,
            );
        }
        for series in &self.series {
            for run in segments(&series.points) {
                let pts: Vec<String> = run
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
                    .collect();
                let _ = write!(
                    s,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" \
                     stroke-width=\"{}\" stroke-linejoin=\"round\"/>",
                    pts.join(" "),
                    series.color,
                    series.width
                );
            }
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"middle\">{}</text>\
             <text transform=\"translate(13 {:.1}) rotate(-90)\" class=\"axis\" \
             text-anchor=\"middle\">{}</text></svg>",
            l + (w - l - r) / 2.0,
            h - 4.0,
            esc(&self.x.label),
            t + (h - t - b) / 2.0,
            esc(&self.y.label)
        );
        s
    }
}

/// Splits points into runs of finite values.
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            out.last_mut().expect("never empty").push((x, y));
        } else if !out.last().expect("never empty").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_round_ticks_on_linear_and_log_axes() {
        let a = Axis::zero_to(283.0, 1.0, "ms");
        assert_eq!(a.max, 400.0);
        assert_eq!(a.ticks(), vec![0.0, 100.0, 200.0, 300.0, 400.0]);
        let l = Axis::log_between(7.0, 640.0, "ms");
        assert_eq!((l.min, l.max), (5.0, 1000.0));
        assert_eq!(l.ticks(), vec![5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]);
    }

    #[test]
    fn breaks_lines_at_missing_points() {
        let s = segments(&[(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0)]);
        assert_eq!(s, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
    }

    #[test]
    fn escapes_labels_inside_the_svg() {
        let c = Chart {
            width: 300.0,
            height: 200.0,
            x: Axis::zero_to(10.0, 1.0, "t <s>"),
            y: Axis::zero_to(1.0, 1.0, "y"),
            series: vec![],
            bands: vec![Band { x0: 1.0, x1: 2.0, label: "a&b".into(), fill: "red" }],
            rules: vec![],
        };
        let s = c.render();
        assert!(s.contains("t &lt;s&gt;") && s.contains("a&amp;b"), "{s}");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
    }
}
