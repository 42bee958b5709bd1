//! One job: live progress and ETA, streaming logs, cancel and retry, and
//! the error shown plainly when it failed.

use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use super::error_message;
use crate::api::{CancelJob, RetryJob, load_job};
use crate::components::{ErrorBox, JobProgress, PageReady};

#[component]
pub fn JobPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok());
    let data = Resource::new(id, |id| async move {
        match id {
            Some(id) => load_job(id).await,
            None => Err(ServerFnError::new("the job id in the address is not a number")),
        }
    });
    let cancel = ServerAction::<CancelJob>::new();
    let retry = ServerAction::<RetryJob>::new();
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading job…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <Title text="Error" /> <ErrorBox message=error_message(&e) /> }.into_any(),
                    Ok(v) => {
                        let j = v.job.clone();
                        let params = serde_json::to_string_pretty(&j.params).unwrap_or_default();
                        view! {
                            <Title text=format!("Job {}", j.id) />
                            <p class="crumbs">
                                <a href="/">"Overview"</a>
                                {v.run.as_ref().map(|r| view! {
                                    " / " <a href=format!("/experiments/{}", r.experiment_id)>{r.experiment_name.clone()}</a>
                                    " / " <a href=format!("/runs/{}", r.id)>{format!("run {}", r.id)}</a>
                                })}
                                {format!(" / job {}", j.id)}
                            </p>
                            <h1>{format!("Job {} · {}", j.id, j.kind)}</h1>
                            <p class="muted">
                                {format!("attempt {} of {} · device {} · created {}", j.attempts, j.max_attempts, j.device, &j.created_at[..19.min(j.created_at.len())])}
                                {j.worker_id.clone().map(|w| format!(" · worker {w}"))}
                            </p>
                            <JobProgress job=j.clone() logs=v.logs.clone() show_log=true />
                            <div class="actions">
                                <ActionForm action=cancel attr:class="inline-form">
                                    <input type="hidden" name="id" value=j.id.to_string() />
                                    <button type="submit" disabled=j.status.is_final()>"Cancel"</button>
                                </ActionForm>
                                <ActionForm action=retry attr:class="inline-form">
                                    <input type="hidden" name="id" value=j.id.to_string() />
                                    <button type="submit"
                                        disabled=!matches!(j.status, rlt_types::JobStatus::Failed | rlt_types::JobStatus::Cancelled)>
                                        "Retry"
                                    </button>
                                </ActionForm>
                                {move || cancel.value().get().or_else(|| retry.value().get()).map(|r| match r {
                                    Ok(job) => view! { <span class="ok">{format!("✓ now {}", job.status.as_str())}</span> }.into_any(),
                                    Err(e) => view! { <span class="field-error">{error_message(&e)}</span> }.into_any(),
                                })}
                            </div>
                            <h2>"Parameters"</h2>
                            <pre class="mono">{params}</pre>
                        }.into_any()
                    }
                }
            })}
            <PageReady />
        </Suspense>
    }
}
