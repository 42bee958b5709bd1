//! The front page: datasets, experiments, recent runs with their reward
//! trend, and jobs in progress.

use leptos::prelude::*;
use leptos_meta::Title;

use super::{error_message, fmt_reward};
use crate::api::load_overview;
use crate::components::chart::sparkline_svg;
use crate::components::{ErrorBox, JobList, PageReady};

#[component]
pub fn OverviewPage() -> impl IntoView {
    let data = Resource::new(|| (), |_| load_overview());
    view! {
        <Title text="Overview" />
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <ErrorBox message=error_message(&e) /> }.into_any(),
                    Ok(v) => view! {
                        <h1>"Overview"</h1>
                        <section>
                            <h2>"Datasets"</h2>
                            {if v.datasets.is_empty() {
                                view! {
                                    <div class="empty">
                                        <p>"No datasets yet."</p>
                                        <p>
                                            "Import one with " <code>"rlt import champ"</code> ", "
                                            <code>"rlt import jsonl FILE --name NAME"</code> " or "
                                            <code>"rlt import synthetic --name NAME"</code>
                                            ", or POST to " <code>"/api/v1/datasets"</code> "."
                                        </p>
                                    </div>
                                }.into_any()
                            } else {
                                view! {
                                    <table class="list" id="datasets">
                                        <thead><tr>
                                            <th>"Name"</th><th>"Source"</th><th class="num">"Questions"</th>
                                            <th class="num">"Reference explanations"</th><th>"Description"</th>
                                        </tr></thead>
                                        <tbody>
                                            {v.datasets.into_iter().map(|d| view! {
                                                <tr data-dataset=d.name.clone()>
                                                    <td><a href=format!("/datasets/{}", d.id)>{d.name.clone()}</a></td>
                                                    <td>{d.source.as_str()}</td>
                                                    <td class="num question-count">{d.question_count}</td>
                                                    <td class="num">{d.reference_count}</td>
                                                    <td class="muted">{d.description.clone()}</td>
                                                </tr>
                                            }).collect_view()}
                                        </tbody>
                                    </table>
                                }.into_any()
                            }}
                        </section>
                        <section>
                            <h2>"Experiments"</h2>
                            {if v.experiments.is_empty() {
                                view! {
                                    <p class="empty">
                                        "No experiments yet. Create one with " <code>"POST /api/v1/experiments"</code>
                                        " (teacher and student model, dataset, config); see the "
                                        <a href="/api/v1/docs">"API docs"</a> "."
                                    </p>
                                }.into_any()
                            } else {
                                view! {
                                    <table class="list" id="experiments">
                                        <thead><tr><th>"Name"</th><th>"Version"</th><th>"Created"</th></tr></thead>
                                        <tbody>
                                            {v.experiments.into_iter().map(|e| view! {
                                                <tr>
                                                    <td><a href=format!("/experiments/{}", e.id)>{e.name.clone()}</a></td>
                                                    <td class="num">{e.version}</td>
                                                    <td class="muted">{e.created_at[..10.min(e.created_at.len())].to_owned()}</td>
                                                </tr>
                                            }).collect_view()}
                                        </tbody>
                                    </table>
                                }.into_any()
                            }}
                        </section>
                        <section>
                            <h2>"Recent runs"</h2>
                            {if v.recent_runs.is_empty() {
                                view! { <p class="empty">"No runs yet. Start one from an experiment's page."</p> }.into_any()
                            } else {
                                view! {
                                    <table class="list" id="runs">
                                        <thead><tr>
                                            <th>"Run"</th><th>"Experiment"</th><th>"Status"</th>
                                            <th>"Reward"</th><th class="num">"Latest"</th>
                                        </tr></thead>
                                        <tbody>
                                            {v.recent_runs.into_iter().map(|c| {
                                                let latest = c.reward_trend.last().map(|p| p.1);
                                                let spark = sparkline_svg(&c.reward_trend, 120, 24);
                                                view! {
                                                    <tr>
                                                        <td><a href=format!("/runs/{}", c.run.id)>{format!("run {}", c.run.id)}</a>
                                                            " " <span class="muted">{c.run.name.clone()}</span></td>
                                                        <td>{c.run.experiment_name.clone()}</td>
                                                        <td>{c.run.status.clone()}</td>
                                                        <td inner_html=spark></td>
                                                        <td class="num">{fmt_reward(latest)}</td>
                                                    </tr>
                                                }
                                            }).collect_view()}
                                        </tbody>
                                    </table>
                                }.into_any()
                            }}
                        </section>
                        <section>
                            <h2>"Active jobs"</h2>
                            {if v.active_jobs.is_empty() {
                                view! { <p class="empty">"No jobs are queued or running."</p> }.into_any()
                            } else {
                                view! { <JobList jobs=v.active_jobs id="active-jobs" /> }.into_any()
                            }}
                        </section>
                    }.into_any(),
                }
            })}
            <PageReady />
        </Suspense>
    }
}
