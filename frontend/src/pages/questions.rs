//! The question browser of a dataset: search, filters, and sorting by the
//! reward difference between two runs (or two steps of one run) to find
//! where a teacher got better or worse. All state is in the URL.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use rlt_types::QuestionBrowse;

use super::{error_message, fmt_reward, truncate, urlencode};
use crate::api::load_questions;
use crate::components::{ErrorBox, PageReady};

fn browse_from_query(q: &leptos_router::params::ParamsMap) -> QuestionBrowse {
    let num = |k: &str| q.get(k).and_then(|v| v.trim().parse::<f64>().ok());
    let text = |k: &str| q.get(k).filter(|v| !v.trim().is_empty());
    QuestionBrowse {
        q: text("q"),
        has_explanations: text("has_explanations"),
        min_reward: num("min_reward"),
        max_reward: num("max_reward"),
        run_a: text("run_a"),
        run_b: text("run_b"),
        sort: text("sort"),
        page: q.get("page").and_then(|p| p.parse().ok()),
    }
}

fn query_string(b: &QuestionBrowse, page: u32) -> String {
    let mut parts = Vec::new();
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{k}={}", urlencode(&v)));
        }
    };
    add("q", b.q.clone());
    add("has_explanations", b.has_explanations.clone());
    add("min_reward", b.min_reward.map(|v| v.to_string()));
    add("max_reward", b.max_reward.map(|v| v.to_string()));
    add("run_a", b.run_a.clone());
    add("run_b", b.run_b.clone());
    add("sort", b.sort.clone());
    add("page", Some(page.to_string()));
    parts.join("&")
}

#[component]
pub fn QuestionBrowserPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok());
    let data = Resource::new(
        move || (id(), browse_from_query(&query.read())),
        |(id, filter)| async move {
            let Some(id) = id else {
                return Err(ServerFnError::new("the dataset id in the address is not a number"));
            };
            load_questions(id, filter.clone()).await.map(|v| (v, filter))
        },
    );
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading questions…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <Title text="Error" /> <ErrorBox message=error_message(&e) /> }.into_any(),
                    Ok((v, f)) => {
                        let d = v.dataset.clone();
                        let comparing = f.run_a.is_some() || f.run_b.is_some();
                        let size = i64::from(v.page_size);
                        let pages = ((v.total + size - 1) / size).max(1) as u32;
                        let base = format!("/datasets/{}", d.id);
                        let prev = (v.page > 1).then(|| format!("{base}?{}", query_string(&f, v.page - 1)));
                        let next = (v.page < pages).then(|| format!("{base}?{}", query_string(&f, v.page + 1)));
                        let run_options = move |selected: Option<String>| {
                            let runs = v.runs.clone();
                            view! {
                                <option value="">"—"</option>
                                {runs.into_iter().map(|r| {
                                    let value = r.id.to_string();
                                    let is_sel = selected.as_deref().map(|s| s.split('@').next() == Some(value.as_str())).unwrap_or(false);
                                    view! { <option value=value selected=is_sel>{format!("run {} · {}", r.id, r.experiment_name)}</option> }
                                }).collect_view()}
                            }
                        };
                        let empty = v.rows.is_empty();
                        view! {
                            <Title text=d.name.clone() />
                            <p class="crumbs"><a href="/">"Overview"</a> " / " {d.name.clone()}</p>
                            <h1>{d.name.clone()}</h1>
                            <p class="muted">
                                {format!("{} questions · source: {}", d.question_count, d.source.as_str())}
                                {(!d.description.is_empty()).then(|| format!(" · {}", d.description))}
                            </p>
                            <form method="get" class="filters">
                                <input type="search" name="q" value=f.q.clone().unwrap_or_default() placeholder="Search question text or id" />
                                <label>"Explanations "
                                    <select name="has_explanations">
                                        <option value="">"any"</option>
                                        <option value="yes" selected=f.has_explanations.as_deref() == Some("yes")>"with"</option>
                                        <option value="no" selected=f.has_explanations.as_deref() == Some("no")>"without"</option>
                                    </select>
                                </label>
                                <label>"Reward ≥ " <input type="number" step="any" name="min_reward" value=f.min_reward.map(|v| v.to_string()) class="short" /></label>
                                <label>"≤ " <input type="number" step="any" name="max_reward" value=f.max_reward.map(|v| v.to_string()) class="short" /></label>
                                <label>"Run A " <select name="run_a">{run_options(f.run_a.clone())}</select></label>
                                <label>"Run B " <select name="run_b">{run_options(f.run_b.clone())}</select></label>
                                <label>"Sort "
                                    <select name="sort">
                                        {[("order", "dataset order"), ("reward_a", "reward A"), ("reward_b", "reward B"),
                                          ("diff", "B − A, largest first"), ("-diff", "B − A, smallest first")]
                                            .into_iter().map(|(value, label)| view! {
                                                <option value=value selected=f.sort.as_deref().unwrap_or("order") == value>{label}</option>
                                            }).collect_view()}
                                    </select>
                                </label>
                                <button type="submit">"Apply"</button>
                            </form>
                            <p class="muted">"Runs can be pinned to a step by typing " <code>"3@32"</code> " in the address (run_a=3@32)."</p>
                            {empty.then(|| view! { <p class="empty">"No questions match these filters."</p> })}
                            <table class="list" id="questions">
                                <thead><tr>
                                    <th class="num">"#"</th><th>"Id"</th><th>"Category"</th><th>"Question"</th>
                                    <th class="num">"Explanations"</th>
                                    {comparing.then(|| view! { <th class="num">"Reward A"</th><th class="num">"Reward B"</th><th class="num">"B − A"</th> })}
                                </tr></thead>
                                <tbody>
                                    {v.rows.into_iter().map(|q| {
                                        let diff = q.reward_a.zip(q.reward_b).map(|(a, b)| b - a);
                                        view! {
                                            <tr>
                                                <td class="num">{q.ordinal + 1}</td>
                                                <td><a href=format!("/questions/{}", q.id)>{q.source_key.clone().unwrap_or_else(|| q.id.to_string())}</a></td>
                                                <td>{q.category.clone()}</td>
                                                <td class="question-text">{truncate(&q.question, 160)}</td>
                                                <td class="num">{q.explanation_count}</td>
                                                {comparing.then(|| view! {
                                                    <td class="num">{fmt_reward(q.reward_a)}</td>
                                                    <td class="num">{fmt_reward(q.reward_b)}</td>
                                                    <td class=move || match diff { Some(x) if x > 0.0 => "num better", Some(x) if x < 0.0 => "num worse", _ => "num" }>
                                                        {fmt_reward(diff)}
                                                    </td>
                                                })}
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                            <p class="pager">
                                {prev.map(|h| view! { <a class="prev" href=h>"← Previous"</a> " " })}
                                {format!("page {} of {pages} · {} questions", v.page, v.total)}
                                {next.map(|h| view! { " " <a class="next" href=h>"Next page →"</a> })}
                            </p>
                        }.into_any()
                    }
                }
            })}
            <PageReady />
        </Suspense>
    }
}
