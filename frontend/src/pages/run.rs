//! One run: a live curve for every metric it records (new metric names
//! appear on their own), with smoothing, other runs overlaid, and alarms
//! (zero-variance groups, clipped completions, NaN) as markers; then its
//! checkpoints and jobs, and a link to the self-contained report.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use rlt_types::{MetricPoint, RunView};

use super::error_message;
use crate::api::load_run;
use crate::components::chart::{Curves, Series, by_name, line_chart_svg, smooth};
use crate::components::{ErrorBox, JobList, PageReady, live};

/// Steps where something went wrong: alarm metrics, clipped completions,
/// NaN values.
fn alarm_steps(series: &Curves) -> Vec<f64> {
    let mut steps: Vec<f64> = series
        .iter()
        .flat_map(|(name, pts)| {
            pts.iter().filter(move |(_, y)| {
                let flagged = name.starts_with("alarm/") || name.ends_with("clipped_rate");
                flagged && *y > 0.0 || y.is_nan()
            })
        })
        .map(|(x, _)| *x)
        .collect();
    steps.sort_by(f64::total_cmp);
    steps.dedup();
    steps
}

#[component]
pub fn RunPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok());
    let overlay = move || {
        query
            .read()
            .get("compare")
            .map(|c| c.split(',').filter_map(|s| s.trim().parse::<i64>().ok()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let data = Resource::new(
        move || (id(), overlay()),
        |(id, overlay)| async move {
            match id {
                Some(id) => load_run(id, overlay).await,
                None => Err(ServerFnError::new("the run id in the address is not a number")),
            }
        },
    );
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading run…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <Title text="Error" /> <ErrorBox message=error_message(&e) /> }.into_any(),
                    Ok(v) => {
                        let smoothing = query.read_untracked().get("smooth").and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
                        view! { <RunBody v=v smoothing=smoothing /> }.into_any()
                    }
                }
            })}
            <PageReady />
        </Suspense>
    }
}

#[component]
fn RunBody(v: RunView, smoothing: f64) -> impl IntoView {
    let r = v.run.clone();
    let run_id = r.id;
    let (points, set_points) = signal(v.metrics.clone());
    // New points arrive over SSE from whichever worker records them.
    Effect::new(move |_| {
        live::subscribe(
            &format!("/api/v1/runs/{run_id}/metrics/stream"),
            vec![(
                "point",
                Box::new(move |data: String| {
                    if let Ok(p) = serde_json::from_str::<MetricPoint>(&data) {
                        set_points.update(|all| {
                            if let Some(old) = all.iter_mut().find(|o| o.name == p.name && o.step == p.step) {
                                *old = p;
                            } else {
                                all.push(p);
                            }
                        });
                    }
                }),
            )],
        );
    });
    let overlays: Vec<(String, Curves)> =
        v.overlays.iter().map(|(run, pts)| (format!("run {}", run.id), by_name(pts))).collect();
    let compare_ids: Vec<i64> = v.overlays.iter().map(|(run, _)| run.id).collect();
    let charts = move || {
        let series = by_name(&points.read());
        let alarms = alarm_steps(&series);
        if series.is_empty() {
            return view! {
                <p class="empty">"No metrics yet. Generate, score and training jobs of this run record them as they go; curves appear here live."</p>
            }
            .into_any();
        }
        series
            .iter()
            .filter(|(name, _)| !name.starts_with("alarm/"))
            .map(|(name, pts)| {
                let mut lines = vec![Series { label: format!("run {run_id}"), points: smooth(pts, smoothing) }];
                for (label, other) in &overlays {
                    if let Some(o) = other.get(name) {
                        lines.push(Series { label: label.clone(), points: smooth(o, smoothing) });
                    }
                }
                let marks = if name.contains("reward") { alarms.clone() } else { Vec::new() };
                let svg = line_chart_svg(name, &lines, &marks, 420, 240);
                view! { <figure class="chart" data-metric=name.clone() inner_html=svg></figure> }
            })
            .collect_view()
            .into_any()
    };
    view! {
        <Title text=format!("Run {}", r.id) />
        <p class="crumbs">
            <a href="/">"Overview"</a> " / "
            <a href=format!("/experiments/{}", r.experiment_id)>{r.experiment_name.clone()}</a>
            {format!(" / run {}", r.id)}
        </p>
        <h1>{format!("Run {} · {}", r.id, r.experiment_name)} " " <span class="muted">{r.name.clone()}</span></h1>
        <p class="muted mono">
            {format!("config v{} {} · seed {} · teacher {} · student {} · code {}",
                r.config_version, &r.config_hash[..12], r.seed, &r.teacher_sha256[..12], &r.student_sha256[..12], r.code_version)}
        </p>
        <p>
            <a href=format!("/runs/{}/report", r.id)>"Report (one HTML file)"</a> " · "
            <a href=format!("/datasets/{}?run_a={}&sort=reward_a", v.dataset_id, r.id)>"Questions by reward"</a>
        </p>
        <form method="get" class="filters">
            <label>"Smoothing " <input type="number" name="smooth" min="0" max="0.99" step="0.05" value=smoothing.to_string() class="short" /></label>
            {(!v.other_runs.is_empty()).then(|| view! {
                <label>"Overlay runs "
                    <select name="compare" multiple=true size="3">
                        {v.other_runs.iter().map(|o| view! {
                            <option value=o.id.to_string() selected=compare_ids.contains(&o.id)>{format!("run {} · {}", o.id, o.experiment_name)}</option>
                        }).collect_view()}
                    </select>
                </label>
            })}
            <button type="submit">"Update"</button>
        </form>
        <div class="charts" id="charts">{charts}</div>
        <section>
            <h2>"Checkpoints"</h2>
            {if v.checkpoints.is_empty() {
                view! { <p class="empty">"No checkpoints: training jobs write them."</p> }.into_any()
            } else {
                view! {
                    <table class="list"><thead><tr><th class="num">"Step"</th><th>"Location"</th><th>"sha256"</th></tr></thead>
                    <tbody>{v.checkpoints.iter().map(|c| view! {
                        <tr><td class="num">{c.step}</td><td class="mono">{c.uri.clone()}</td><td class="mono">{c.sha256[..12.min(c.sha256.len())].to_owned()}</td></tr>
                    }).collect_view()}</tbody></table>
                }.into_any()
            }}
        </section>
        <section>
            <h2>"Jobs"</h2>
            {if v.jobs.is_empty() {
                view! { <p class="empty">"No jobs for this run yet: queue one from the experiment's page."</p> }.into_any()
            } else {
                view! { <JobList jobs=v.jobs id="run-jobs" /> }.into_any()
            }}
        </section>
    }
}
