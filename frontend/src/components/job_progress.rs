//! A job's progress bar, ETA, status and log, kept live over SSE.

use leptos::prelude::*;
use rlt_types::{Job, JobLog, JobStatus};

use super::live;

pub fn eta_text(seconds: Option<f64>) -> String {
    match seconds {
        None => String::new(),
        Some(s) if s < 60.0 => format!("ETA {s:.0} s"),
        Some(s) if s < 3600.0 => format!("ETA {:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0),
        Some(s) => format!("ETA {:.0} h {:.0} min", (s / 3600.0).floor(), (s % 3600.0) / 60.0),
    }
}

fn percent(job: &Job) -> f64 {
    match job.progress_total {
        Some(t) if t > 0 => (job.progress_done as f64 / t as f64 * 100.0).clamp(0.0, 100.0),
        _ if job.status == JobStatus::Succeeded => 100.0,
        _ => 0.0,
    }
}

/// Progress of one job; with `show_log`, its log lines below.
#[component]
pub fn JobProgress(job: Job, #[prop(optional)] logs: Vec<JobLog>, #[prop(optional)] show_log: bool) -> impl IntoView {
    let id = job.id;
    let (job, set_job) = signal(job);
    let (logs, set_logs) = signal(logs);
    if !job.get_untracked().status.is_final() {
        Effect::new(move |_| {
            live::subscribe(
                &format!("/api/v1/jobs/{id}/events"),
                vec![
                    (
                        "job",
                        Box::new(move |data: String| {
                            if let Ok(j) = serde_json::from_str::<Job>(&data) {
                                set_job.set(j);
                            }
                        }),
                    ),
                    (
                        "log",
                        Box::new(move |data: String| {
                            if let Ok(line) = serde_json::from_str::<JobLog>(&data) {
                                set_logs.update(|l| {
                                    if !l.iter().any(|x| x.id == line.id) {
                                        l.push(line);
                                    }
                                });
                            }
                        }),
                    ),
                ],
            );
        });
    }
    view! {
        <div class="job-progress" data-job=id>
            <div class="progress-line">
                <span class=move || format!("status status-{}", job.read().status.as_str())>
                    {move || job.read().status.as_str()}
                </span>
                <span class="bar" role="progressbar"
                    aria-valuenow=move || format!("{:.0}", percent(&job.read()))
                    aria-valuemin="0" aria-valuemax="100">
                    <span class="fill" style=move || format!("width:{:.1}%", percent(&job.read()))></span>
                </span>
                <span class="counts">
                    {move || {
                        let j = job.read();
                        match j.progress_total {
                            Some(t) => format!("{}/{}", j.progress_done, t),
                            None => j.progress_done.to_string(),
                        }
                    }}
                </span>
                <span class="eta muted">{move || eta_text(job.read().eta_seconds)}</span>
            </div>
            {move || job.read().error.clone().map(|e| view! { <pre class="job-error">{e}</pre> })}
            {show_log.then(|| view! {
                <pre class="job-log" aria-live="polite">
                    {move || logs.read().iter().map(|l| format!("{} [{}] {}\n", &l.ts[11..19.min(l.ts.len())], l.level, l.message)).collect::<String>()}
                </pre>
            })}
        </div>
    }
}

/// Jobs, each linked to its page with its live progress.
#[component]
pub fn JobList(jobs: Vec<Job>, #[prop(into)] id: String) -> impl IntoView {
    view! {
        <ul class="jobs" id=id>
            {jobs.into_iter().map(|j| view! {
                <li>
                    <a href=format!("/jobs/{}", j.id)>{format!("job {} · {}", j.id, j.kind)}</a>
                    " "
                    <JobProgress job=j />
                </li>
            }).collect_view()}
        </ul>
    }
}
