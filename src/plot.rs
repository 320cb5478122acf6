//! Line charts as standalone SVG (loss curves, sweeps over the fusion weight): axes with round
//! ticks, one polyline and marker set per series, a legend. Hand-written because the charts are
//! simple and a plotting crate would need font files to lay out text.

use std::fmt::Write;

/// One named series of (x, y) points, drawn in order.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw markers at the points (sparse series: per-epoch values).
    pub markers: bool,
    /// Join the points (false: a scatter).
    pub line: bool,
    pub dashed: bool,
    /// A label beside each point (empty: none).
    pub labels: Vec<String>,
    /// (low, high) of each point's interval, drawn as a vertical bar (empty: none).
    pub y_err: Vec<(f64, f64)>,
}

impl Series {
    /// Points joined by a line.
    pub fn line(name: &str, points: Vec<(f64, f64)>, markers: bool) -> Series {
        Series { name: name.into(), points, markers, line: true, ..Series::default() }
    }

    /// Markers only.
    pub fn scatter(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, markers: true, ..Series::default() }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
const W: f64 = 720.0;
const H: f64 = 420.0;
// plot area margins
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 50.0;

/// About `n` round tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= n as f64).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    if v == 0.0 || (1e-3..1e5).contains(&v.abs()) {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.2e}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

impl Chart {
    /// The chart as an SVG document. Non-finite points are left out.
    pub fn svg(&self) -> String {
        let pts = || self.series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in pts() {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        for &(lo, hi) in self.series.iter().flat_map(|s| s.y_err.iter()).filter(|e| e.0.is_finite() && e.1.is_finite())
        {
            (y0, y1) = (y0.min(lo), y1.max(hi));
        }
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        let pad = ((y1 - y0) * 0.05).max(1e-9 * y1.abs().max(1.0));
        (y0, y1) = (y0 - pad, y1 + pad);
        // room for the markers and labels at the ends
        let xpad = (x1 - x0) * 0.04;
        (x0, x1) = (x0 - xpad, x1 + xpad);
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            W / 2.0,
            escape(&self.title)
        );
        for t in ticks(x0, x1, 8) {
            let x = sx(t);
            let _ = writeln!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                TOP + ph,
                TOP + ph + 16.0,
                label(t)
            );
        }
        for t in ticks(y0, y1, 6) {
            let y = sy(t);
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                label(t)
            );
        }
        let _ = writeln!(s, r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 12.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            TOP + ph / 2.0,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        // label positions taken, so coinciding points' labels stack instead of overprinting
        let mut placed: Vec<(f64, f64)> = Vec::new();
        for (i, ser) in self.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let kept: Vec<(usize, (f64, f64))> = ser
                .points
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, p)| p.0.is_finite() && p.1.is_finite())
                .map(|(j, (x, y))| (j, (sx(x), sy(y))))
                .collect();
            let dash = if ser.dashed { r#" stroke-dasharray="6 4""# } else { "" };
            if ser.line && kept.len() > 1 {
                let path: Vec<String> = kept.iter().map(|(_, (x, y))| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{c}" stroke-width="1.5"{dash} points="{}"/>"#,
                    path.join(" ")
                );
            }
            for &(j, (x, y)) in &kept {
                if let Some(&(lo, hi)) = ser.y_err.get(j).filter(|e| e.0.is_finite() && e.1.is_finite()) {
                    let _ = writeln!(
                        s,
                        r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{c}" stroke-opacity="0.5"/>"#,
                        sy(lo),
                        sy(hi)
                    );
                }
                if ser.markers || kept.len() == 1 {
                    let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{c}"/>"#);
                }
                if let Some(l) = ser.labels.get(j) {
                    let (lx, mut ly) = (x + 5.0, y - 5.0);
                    while placed.iter().any(|&(px, py)| (px - lx).abs() < 40.0 && (py - ly).abs() < 10.0) {
                        ly += 11.0;
                    }
                    placed.push((lx, ly));
                    let _ = writeln!(s, r#"<text x="{lx:.1}" y="{ly:.1}" font-size="10">{}</text>"#, escape(l));
                }
            }
            // the legend: one row under the title, clear of the data
            let (lx, ly) = (LEFT + 160.0 * i as f64, 40.0);
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
                lx + 18.0,
                lx + 24.0,
                ly + 4.0,
                escape(&ser.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.013, 0.087, 6);
        assert!(t.iter().all(|&v| (0.013..=0.087).contains(&v)) && t.len() >= 3, "{t:?}");
    }

    #[test]
    fn chart_draws_every_series_and_skips_nan() {
        let chart = Chart {
            title: "loss <train>".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![
                Series::line("train", vec![(0.0, 2.0), (1.0, f64::NAN), (2.0, 1.0)], false),
                Series::line("held out", vec![(2.0, 1.5)], true),
                Series {
                    labels: vec!["λ=0".into(), "λ=1".into()],
                    y_err: vec![(0.1, 0.4), (f64::NAN, 0.0)],
                    ..Series::scatter("sweep", vec![(0.0, 0.2), (1.0, 0.9)])
                },
            ],
        };
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("loss &lt;train&gt;") && !svg.contains("NaN"));
        // one error bar (the other's interval is not finite), both labels
        assert_eq!(svg.matches("stroke-opacity").count(), 1);
        assert!(svg.contains(">λ=0<") && svg.contains(">λ=1<"));
    }
}
