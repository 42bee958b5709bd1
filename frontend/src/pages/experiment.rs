//! An experiment: its config with the version history and a diff between
//! versions, its runs, and forms to start a run or a job of any kind the
//! server offers (built from each kind's parameter schema).

use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use rlt_types::{ExperimentView, JobKindInfo};

use super::error_message;
use crate::api::{QueueJob, SaveConfig, StartRun, load_experiment};
use crate::components::{ErrorBox, PageReady};

/// A line diff of two texts (longest common subsequence): (sign, line).
pub fn line_diff(a: &str, b: &str) -> Vec<(char, String)> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push((' ', a[i].to_owned()));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j].to_owned()));
            j += 1;
        } else {
            out.push(('-', a[i].to_owned()));
            i += 1;
        }
    }
    out
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Example params for a kind: its required fields filled from the page.
fn params_template(kind: &JobKindInfo, run_id: Option<i64>) -> String {
    let mut obj = serde_json::Map::new();
    let required = kind.params_schema["required"].as_array().cloned().unwrap_or_default();
    let props = kind.params_schema["properties"].as_object().cloned().unwrap_or_default();
    for (name, schema) in &props {
        let is_required = required.iter().any(|r| r == name.as_str());
        if name == "run_id"
            && let Some(run) = run_id
        {
            obj.insert(name.clone(), run.into());
        } else if is_required {
            obj.insert(name.clone(), schema.get("default").cloned().unwrap_or(serde_json::Value::Null));
        }
    }
    if obj.is_empty()
        && props.contains_key("run_id")
        && let Some(run) = run_id
    {
        obj.insert("run_id".into(), run.into());
    }
    serde_json::to_string_pretty(&obj).unwrap_or_else(|_| "{}".into())
}

#[component]
pub fn ExperimentPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok());
    let data = Resource::new(id, |id| async move {
        match id {
            Some(id) => load_experiment(id).await,
            None => Err(ServerFnError::new("the experiment id in the address is not a number")),
        }
    });
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading experiment…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <Title text="Error" /> <ErrorBox message=error_message(&e) /> }.into_any(),
                    Ok(v) => {
                        let q = query.read_untracked();
                        let va = q.get("a").and_then(|s| s.parse::<i32>().ok());
                        let vb = q.get("b").and_then(|s| s.parse::<i32>().ok());
                        view! { <ExperimentBody v=v diff=(va, vb) /> }.into_any()
                    }
                }
            })}
            <PageReady />
        </Suspense>
    }
}

#[component]
fn ExperimentBody(v: ExperimentView, diff: (Option<i32>, Option<i32>)) -> impl IntoView {
    let e = v.experiment.clone();
    let exp_id = e.id;
    let latest_run = v.runs.first().map(|r| r.id);
    let versions = v.versions.clone();
    let (va, vb) = match diff {
        (Some(a), Some(b)) => (a, b),
        _ => (e.version.saturating_sub(1).max(1), e.version),
    };
    let find = |n: i32| versions.iter().find(|c| c.version == n).map(|c| pretty(&c.config));
    let diff_lines = match (find(va), find(vb)) {
        (Some(a), Some(b)) if va != vb => Some(line_diff(&a, &b)),
        _ => None,
    };
    let start_run = ServerAction::<StartRun>::new();
    let save_config = ServerAction::<SaveConfig>::new();
    view! {
        <Title text=e.name.clone() />
        <p class="crumbs"><a href="/">"Overview"</a> " / experiment " {e.name.clone()}</p>
        <h1>{e.name.clone()}</h1>
        <p class="muted">
            "dataset " <a href=format!("/datasets/{}", v.dataset.id)>{v.dataset.name.clone()}</a>
            {format!(" · teacher {} · student {} · config v{}", v.teacher.name, v.student.name, e.version)}
        </p>
        {(!e.description.is_empty()).then(|| view! { <p>{e.description.clone()}</p> })}

        <section>
            <h2>"Runs"</h2>
            {if v.runs.is_empty() {
                view! { <p class="empty">"No runs yet: start one below, then a generate job for it."</p> }.into_any()
            } else {
                view! {
                    <table class="list" id="experiment-runs">
                        <thead><tr><th>"Run"</th><th>"Config"</th><th>"Seed"</th><th>"Status"</th><th>"Code"</th></tr></thead>
                        <tbody>
                            {v.runs.iter().map(|r| view! {
                                <tr>
                                    <td><a href=format!("/runs/{}", r.id)>{format!("run {}", r.id)}</a> " " <span class="muted">{r.name.clone()}</span></td>
                                    <td>{format!("v{}", r.config_version)}</td>
                                    <td class="num">{r.seed}</td>
                                    <td>{r.status.clone()}</td>
                                    <td class="muted mono">{r.code_version.clone()}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any()
            }}
            <ActionForm action=start_run attr:class="inline-form" attr:id="start-run">
                <input type="hidden" name="experiment_id" value=exp_id.to_string() />
                <label>"Name " <input name="name" /></label>
                <label>"Seed " <input name="seed" class="short" placeholder="random" /></label>
                <button type="submit">"Start a run"</button>
            </ActionForm>
            <FormResult action_value=start_run.value() describe=|r: &rlt_types::Run| (format!("/runs/{}", r.id), format!("run {} started", r.id)) />
        </section>

        <section>
            <h2>"Start a job"</h2>
            {v.job_kinds.iter().map(|k| view! { <JobForm kind=k.clone() run_id=latest_run /> }).collect_view()}
        </section>

        <section>
            <h2>"Config"</h2>
            <p class="muted">"Versions are never changed: a run keeps the version it started with, and saving an edit adds a version."</p>
            <ul class="versions">
                {versions.iter().map(|c| view! {
                    <li>{format!("v{} · {} · {} runs · ", c.version, &c.created_at[..19.min(c.created_at.len())], c.run_count)}
                        <span class="mono">{c.config_hash[..12].to_owned()}</span></li>
                }).collect_view()}
            </ul>
            {diff_lines.map(|lines| view! {
                <h3>{format!("Changes from v{va} to v{vb}")}</h3>
                <pre class="diff" id="config-diff">
                    {lines.into_iter().map(|(sign, line)| {
                        let class = match sign { '+' => "add", '-' => "del", _ => "same" };
                        view! { <span class=class>{format!("{sign} {line}\n")}</span> }
                    }).collect_view()}
                </pre>
            })}
            <form method="get" class="inline-form">
                <label>"Compare v" <input name="a" class="short" value=va.to_string() /></label>
                <label>" with v" <input name="b" class="short" value=vb.to_string() /></label>
                <button type="submit">"Diff"</button>
            </form>
            <ActionForm action=save_config attr:id="edit-config">
                <input type="hidden" name="experiment_id" value=exp_id.to_string() />
                <textarea name="config" rows="18" class="mono">{pretty(&e.config)}</textarea>
                <button type="submit">"Save as a new version"</button>
            </ActionForm>
            <FormResult action_value=save_config.value()
                describe=move |c: &rlt_types::ConfigVersion| (format!("/experiments/{exp_id}"), format!("saved as v{}", c.version)) />
        </section>
    }
}

/// A form for one job kind: its description, a JSON params box prefilled
/// from the schema, and field-level errors from the server.
#[component]
fn JobForm(kind: JobKindInfo, run_id: Option<i64>) -> impl IntoView {
    let action = ServerAction::<QueueJob>::new();
    let template = params_template(&kind, run_id);
    let fields: Vec<String> = kind.params_schema["properties"]
        .as_object()
        .map(|p| {
            p.iter()
                .map(|(name, s)| {
                    format!("{name}: {}", s["description"].as_str().unwrap_or(s["type"].as_str().unwrap_or("")))
                })
                .collect()
        })
        .unwrap_or_default();
    let name = kind.name.clone();
    let (hidden_name, button) = (name.clone(), format!("Queue {name}"));
    view! {
        <div class="card job-form" data-kind=name.clone()>
            <h3>{name.clone()}</h3>
            <p class="muted">{kind.description.clone()}</p>
            <ActionForm action=action>
                <input type="hidden" name="kind" value=hidden_name />
                <textarea name="params" rows="4" class="mono">{template}</textarea>
                <details><summary>"Parameters"</summary><ul>{fields.into_iter().map(|f| view! { <li class="mono">{f}</li> }).collect_view()}</ul></details>
                <button type="submit">{button}</button>
            </ActionForm>
            <FormResult action_value=action.value() describe=|j: &rlt_types::Job| (format!("/jobs/{}", j.id), format!("job {} queued", j.id)) />
        </div>
    }
}

/// The outcome of a form: a link to what was made, or the error with the
/// field it names (`params.run_id: …`).
#[component]
fn FormResult<T, S, F>(action_value: S, describe: F) -> impl IntoView
where
    T: Send + Sync + Clone + 'static,
    S: Get<Value = Option<Result<T, ServerFnError>>> + Send + Sync + 'static,
    F: Fn(&T) -> (String, String) + Send + Sync + 'static,
{
    move || {
        action_value.get().map(|r| match r {
            Ok(v) => {
                let (href, text) = describe(&v);
                view! { <p class="ok">"✓ " <a href=href>{text}</a></p> }.into_any()
            }
            Err(e) => {
                let message = error_message(&e);
                let (field, text) = match message.split_once(": ") {
                    Some((f, t)) if !f.contains(' ') => (Some(f.to_owned()), t.to_owned()),
                    _ => (None, message),
                };
                view! {
                    <p class="field-error" role="alert">
                        {field.map(|f| view! { <strong class="mono">{f}</strong> ": " })}
                        {text}
                    </p>
                }
                .into_any()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn diff_marks_changed_lines() {
        let d = line_diff("a\nb\nc", "a\nB\nc\nd");
        assert_eq!(
            d,
            vec![(' ', "a".into()), ('+', "B".into()), ('-', "b".into()), (' ', "c".into()), ('+', "d".into())]
        );
    }
}
