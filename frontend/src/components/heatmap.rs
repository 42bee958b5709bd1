//! Per-token heatmaps: each token is a span coloured by its value on a
//! colour-blind-safe scale (viridis), with the exact numbers on hover.
//! Token text is always rendered as text (escaped), never as markup.

use leptos::prelude::*;

/// Viridis at nine stops, dark (low) to bright (high).
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];

/// The colour at `t` in [0, 1], interpolated between stops.
pub fn viridis(t: f64) -> (u8, u8, u8) {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let pos = t * (VIRIDIS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(VIRIDIS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn css(rgb: (u8, u8, u8)) -> String {
    format!("rgb({},{},{})", rgb.0, rgb.1, rgb.2)
}

/// Dark text on bright cells, light text on dark ones.
fn text_color(rgb: (u8, u8, u8)) -> &'static str {
    let luma = 0.299 * rgb.0 as f64 + 0.587 * rgb.1 as f64 + 0.114 * rgb.2 as f64;
    if luma > 140.0 { "#111" } else { "#fff" }
}

/// Colour buckets of a heatmap; the legend and `HeatmapStyles` use the same.
pub const BUCKETS: usize = 32;

/// The class of each bucket, spelled out so rendering allocates nothing for it.
const BUCKET_CLASSES: [&str; BUCKETS] = [
    "tok h0", "tok h1", "tok h2", "tok h3", "tok h4", "tok h5", "tok h6", "tok h7", "tok h8", "tok h9", "tok h10",
    "tok h11", "tok h12", "tok h13", "tok h14", "tok h15", "tok h16", "tok h17", "tok h18", "tok h19", "tok h20",
    "tok h21", "tok h22", "tok h23", "tok h24", "tok h25", "tok h26", "tok h27", "tok h28", "tok h29", "tok h30",
    "tok h31",
];

fn bucket(t: f64) -> usize {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    ((t * BUCKETS as f64) as usize).min(BUCKETS - 1)
}

/// The CSS of the colour buckets (`.tok.h0` … `.tok.h31`), once per page.
#[component]
pub fn HeatmapStyles() -> impl IntoView {
    let css_text: String = (0..BUCKETS)
        .map(|i| {
            let rgb = viridis((i as f64 + 0.5) / BUCKETS as f64);
            format!(".tok.h{i}{{background:{};color:{}}}", css(rgb), text_color(rgb))
        })
        .collect();
    view! { <style>{css_text}</style> }
}

/// Tokens coloured by `values` mapped from [lo, hi]; `hover[i]` is the
/// tooltip of token i.
#[component]
pub fn TokenHeatmap(
    tokens: Vec<String>,
    values: Vec<f64>,
    hover: Vec<String>,
    lo: f64,
    hi: f64,
    #[prop(into)] class: String,
) -> impl IntoView {
    let span = (hi - lo).max(1e-9);
    let cells = tokens
        .into_iter()
        .zip(values)
        .zip(hover)
        .map(|((token, value), title)| {
            // A class per colour bucket rather than an inline style: pages
            // carry thousands of tokens.
            view! { <span class=BUCKET_CLASSES[bucket((value - lo) / span)] title=title>{token}</span> }
        })
        .collect_view();
    // The tooltip works without JavaScript; once hydrated, the hovered
    // token's numbers also stay readable in a line under the heatmap.
    let (info, set_info) = signal(String::new());
    let on_hover = move |ev: leptos::ev::MouseEvent| {
        use leptos::wasm_bindgen::JsCast;
        let title = ev
            .target()
            .and_then(|t| t.dyn_into::<leptos::web_sys::Element>().ok())
            .filter(|e| e.get_attribute("class").is_some_and(|c| c.split(' ').any(|c| c == "tok")))
            .and_then(|e| e.get_attribute("title"));
        if let Some(title) = title {
            set_info.set(title);
        }
    };
    view! {
        <div class=format!("heatmap {class}") on:mouseover=on_hover>{cells}</div>
        <div class="tok-info muted mono" aria-live="polite">{move || info.get()}</div>
    }
}

/// The scale of a heatmap: a gradient bar from `lo` to `hi` with labels.
#[component]
pub fn HeatmapLegend(#[prop(into)] label: String, lo: f64, hi: f64) -> impl IntoView {
    let stops: Vec<String> = (0..=8).map(|i| css(viridis(i as f64 / 8.0))).collect();
    let gradient = format!("background:linear-gradient(to right,{})", stops.join(","));
    view! {
        <div class="legend">
            <span class="legend-label">{label}</span>
            <span class="legend-lo">{format!("{lo:.2}")}</span>
            <span class="legend-bar" style=gradient></span>
            <span class="legend-hi">{format!("{hi:.2}")}</span>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_ends_and_clamps() {
        assert_eq!(viridis(0.0), VIRIDIS[0]);
        assert_eq!(viridis(1.0), VIRIDIS[8]);
        assert_eq!(viridis(7.0), VIRIDIS[8]);
        assert_eq!(viridis(f64::NAN), VIRIDIS[0]);
        assert_eq!(text_color(VIRIDIS[0]), "#fff");
        assert_eq!(text_color(VIRIDIS[8]), "#111");
        for (i, class) in BUCKET_CLASSES.iter().enumerate() {
            assert_eq!(*class, format!("tok h{i}"));
        }
        assert_eq!((bucket(0.0), bucket(0.5), bucket(1.0), bucket(f64::NAN)), (0, BUCKETS / 2, BUCKETS - 1, 0));
    }
}
