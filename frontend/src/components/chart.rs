//! Line charts drawn with plotters into SVG, the same code on the server
//! (first paint) and in the browser (live updates).

use plotters::prelude::*;

/// Colour-blind-safe series colours (Okabe–Ito).
pub const SERIES_COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(0, 0, 0),
];

/// (step, value) points of each metric, by name.
pub type Curves = std::collections::BTreeMap<String, Vec<(f64, f64)>>;

/// Metric points grouped by name, each sorted by step (one point per step).
pub fn by_name(points: &[rlt_types::MetricPoint]) -> Curves {
    let mut out = Curves::new();
    for p in points {
        out.entry(p.name.clone()).or_default().push((p.step as f64, p.value.unwrap_or(f64::NAN)));
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
    }
    out
}

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Exponential moving average with weight `alpha` on the past (0 = none), as
/// TensorBoard smooths curves.
pub fn smooth(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let alpha = alpha.clamp(0.0, 0.99);
    let mut out = Vec::with_capacity(points.len());
    let mut last: Option<f64> = None;
    for &(x, y) in points {
        let v = match last {
            Some(l) => alpha * l + (1.0 - alpha) * y,
            None => y,
        };
        last = Some(v);
        out.push((x, v));
    }
    out
}

/// Only characters that need no escaping in SVG text, so a metric or run
/// name can never inject markup.
fn safe_label(s: &str) -> String {
    s.chars().filter(|c| c.is_alphanumeric() || " _-/.:·()@#".contains(*c)).take(60).collect()
}

/// An SVG line chart; `alarms` are steps drawn as red markers on the x axis.
pub fn line_chart_svg(title: &str, series: &[Series], alarms: &[f64], width: u32, height: u32) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let _ = draw(&root, title, series, alarms);
        let _ = root.present();
    }
    svg
}

fn draw<'a>(
    root: &'a DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
    alarms: &[f64],
) -> Result<(), Box<dyn std::error::Error + 'a>> {
    root.fill(&WHITE)?;
    let finite = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in finite() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    let mut chart = ChartBuilder::on(root)
        .caption(safe_label(title), ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
    // Steps are integers: never label half steps.
    let x_ticks = ((x1 - x0).round() as usize + 1).clamp(2, 10);
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 11))
        .x_labels(x_ticks)
        .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-6 { format!("{x:.0}") } else { String::new() })
        .y_label_formatter(&|y| tick_label(*y))
        .x_desc("step")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = SERIES_COLORS[i % SERIES_COLORS.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        let drawn = chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        if series.len() > 1 {
            drawn.label(safe_label(&s.label)).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color));
        }
        if pts.len() == 1 {
            chart.draw_series(PointSeries::of_element(pts, 3, color.filled(), &|c, s, st| Circle::new(c, s, st)))?;
        }
    }
    let marker_y = y0 - pad * 0.5;
    chart.draw_series(
        alarms
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| TriangleMarker::new((x, marker_y), 6, RGBColor(200, 0, 0).filled())),
    )?;
    if series.len() > 1 {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    Ok(())
}

/// A histogram of `values` in `bins` equal-width bins, as SVG.
pub fn histogram_svg(title: &str, values: &[f64], bins: usize, width: u32, height: u32) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let _ = draw_histogram(&root, title, values, bins.max(1));
        let _ = root.present();
    }
    svg
}

fn draw_histogram<'a>(
    root: &'a DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    values: &[f64],
    bins: usize,
) -> Result<(), Box<dyn std::error::Error + 'a>> {
    root.fill(&WHITE)?;
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for v in &finite {
        counts[(((v - lo) / w) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(safe_label(title), ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(40)
        .build_cartesian_2d(lo..hi, 0u32..top + 1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 11))
        .x_label_formatter(&|x| tick_label(*x))
        .x_desc("value")
        .y_desc("count")
        .draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x = lo + i as f64 * w;
        Rectangle::new([(x, 0), (x + w, c)], SERIES_COLORS[0].mix(0.8).filled())
    }))?;
    Ok(())
}

/// Few digits for big values, more for small ones (rewards, rates).
fn tick_label(y: f64) -> String {
    match y.abs() {
        a if a >= 100.0 => format!("{y:.0}"),
        a if a >= 1.0 => format!("{y:.2}"),
        _ => format!("{y:.3}"),
    }
}

/// A tiny trend line for tables, without axes.
pub fn sparkline_svg(points: &[(i64, f64)], width: u32, height: u32) -> String {
    if points.len() < 2 {
        return String::new();
    }
    let (x0, x1) = (points[0].0 as f64, points[points.len() - 1].0 as f64);
    let (y0, y1) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, y)| (a.min(y), b.max(y)));
    let sx = |x: f64| if x1 > x0 { (x - x0) / (x1 - x0) * (width as f64 - 2.0) + 1.0 } else { 1.0 };
    let sy =
        |y: f64| if y1 > y0 { (1.0 - (y - y0) / (y1 - y0)) * (height as f64 - 2.0) + 1.0 } else { height as f64 / 2.0 };
    let path: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x as f64), sy(y))).collect();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="sparkline"><polyline fill="none" stroke="#0072b2" stroke-width="1.5" points="{}"/></svg>"##,
        path.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_and_labels_are_sanitized() {
        let s = Series { label: "<script>x</script>".into(), points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)] };
        let svg = line_chart_svg("reward <b>", &[s], &[1.0], 300, 200);
        assert!(svg.starts_with("<svg"));
        assert!(!svg.contains("<script>") && !svg.contains("<b>"));
        let h = histogram_svg("reward", &[0.0, 0.1, 0.9, f64::NAN], 4, 300, 200);
        assert_eq!(h.matches("<rect").count() - 1, 4, "a background and one bar per bin");
        assert!(sparkline_svg(&[(0, 1.0), (1, 2.0)], 80, 20).contains("polyline"));
        assert_eq!(smooth(&[(0.0, 0.0), (1.0, 1.0)], 0.5), vec![(0.0, 0.0), (1.0, 0.5)]);
    }
}
