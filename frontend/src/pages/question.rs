//! One question: its text, solution and answer, then side-by-side columns of
//! explanations from chosen sources (reference traces, runs at a step), each
//! with its reward breakdown and per-token heatmaps: thought KL on the
//! explanation, the student's log-prob on the solution. Columns and steps
//! live in the URL (`?cols=ref:12&cols=run:3@32`).

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_navigate, use_params_map, use_query_map};
use rlt_types::{Column, RewardRecord};

use super::{error_message, fmt_reward, urlencode};
use crate::api::load_question;
use crate::components::{ErrorBox, HeatmapLegend, HeatmapStyles, PageReady, TokenHeatmap};

/// The 95th percentile of |values| (at least `floor`), so one outlier does
/// not wash out every other token's colour.
fn scale_top(values: impl Iterator<Item = f64>, floor: f64) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).map(f64::abs).collect();
    if v.is_empty() {
        return floor;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.95) as usize).min(v.len() - 1)].max(floor)
}

/// Appends `x` with three decimals, as `{x:.3}` would, but through integer
/// formatting: a page of long explanations formats tens of thousands.
fn fixed3(out: &mut String, x: f64) {
    use std::fmt::Write;
    if !x.is_finite() || x.abs() > 1e12 {
        let _ = write!(out, "{x:.3}");
        return;
    }
    let m = (x * 1000.0).round() as i64;
    if m < 0 {
        out.push('-');
    }
    let a = m.unsigned_abs();
    let _ = write!(out, "{}.{:03}", a / 1000, a % 1000);
}

fn cols_query(keys: &[String]) -> String {
    keys.iter().map(|k| format!("cols={}", urlencode(k))).collect::<Vec<_>>().join("&")
}

#[component]
pub fn QuestionPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok());
    let cols = move || query.read().get_all("cols").unwrap_or_default();
    let data = Resource::new(
        move || (id(), cols()),
        |(id, cols)| async move {
            match id {
                Some(id) => load_question(id, cols).await,
                None => Err(ServerFnError::new("the question id in the address is not a number")),
            }
        },
    );
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading question…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <Title text="Error" /> <ErrorBox message=error_message(&e) /> }.into_any(),
                    Ok(v) => {
                        let q = v.question.clone();
                        let title = q.source_key.clone().unwrap_or_else(|| format!("Question {}", q.id));
                        let keys: Vec<String> = v.columns.iter().map(|c| c.key.clone()).collect();
                        let kl_top = scale_top(v.columns.iter().filter_map(|c| c.reward.as_ref()).flat_map(|r| r.score.thought_kl.clone()), 0.5);
                        let lp_top = scale_top(v.columns.iter().filter_map(|c| c.reward.as_ref()).flat_map(|r| r.score.solution_logprobs.clone()), 1.0);
                        let any_reward = v.columns.iter().any(|c| c.reward.is_some());
                        let n = v.columns.len().max(1);
                        view! {
                            <Title text=title.clone() />
                            <p class="crumbs">
                                <a href="/">"Overview"</a> " / "
                                <a href=format!("/datasets/{}", q.dataset_id)>{q.dataset_name.clone()}</a>
                                " / " {title.clone()}
                            </p>
                            <h1>{title}</h1>
                            <section class="card">
                                <h2>"Question"</h2>
                                <div class="text math" id="question-text">{q.question.clone()}</div>
                            </section>
                            <section class="card">
                                <h2>"Solution"</h2>
                                <div class="text math" id="solution-text">{q.solution.clone()}</div>
                                {q.answer.clone().map(|a| view! { <p><strong>"Answer: "</strong> <span class="math">{a}</span></p> })}
                            </section>
                            <details class="card sources">
                                <summary>{format!("Columns: {} of {} sources", v.columns.len(), v.sources.len())}</summary>
                                <form method="get" id="column-picker">
                                    {v.sources.iter().map(|s| {
                                        let checked = keys.iter().any(|k| k == &s.key || k.starts_with(&format!("{}#", s.key)));
                                        view! {
                                            <label class="source"><input type="checkbox" name="cols" value=s.key.clone() checked=checked />
                                            " " {s.label.clone()}</label>
                                        }
                                    }).collect_view()}
                                    <button type="submit">"Show"</button>
                                </form>
                            </details>
                            {any_reward.then(|| view! {
                                <HeatmapStyles />
                                <div class="legends">
                                    <HeatmapLegend label="thought KL per token (teacher − student log-prob)" lo=0.0 hi=kl_top />
                                    <HeatmapLegend label="solution surprise per token (−log-prob)" lo=0.0 hi=lp_top />
                                </div>
                            })}
                            {v.columns.is_empty().then(|| view! {
                                <p class="empty">"No explanations for this question yet. Run a generate job for an experiment on this dataset, or import a dataset with reference explanations."</p>
                            })}
                            <div class="columns" id="explanation-columns" style=format!("grid-template-columns:repeat({n},minmax(18rem,1fr))")>
                                {v.columns.into_iter().enumerate().map(|(i, c)| {
                                    let keys = keys.clone();
                                    view! { <ExplanationColumn column=c index=i keys=keys kl_top=kl_top lp_top=lp_top /> }
                                }).collect_view()}
                            </div>
                        }.into_any()
                    }
                }
            })}
            <PageReady />
        </Suspense>
    }
}

#[component]
fn ExplanationColumn(column: Column, index: usize, keys: Vec<String>, kl_top: f64, lp_top: f64) -> impl IntoView {
    let c = column;
    // Links that swap this column for another step or sample.
    let with_key = {
        let keys = keys.clone();
        move |new_key: String| {
            let mut k = keys.clone();
            k[index] = new_key;
            format!("?{}", cols_query(&k))
        }
    };
    let step_links: Vec<(i32, String)> = match c.run_id {
        Some(run) => c.steps.iter().map(|&s| (s, with_key(format!("run:{run}@{s}")))).collect(),
        None => Vec::new(),
    };
    let sample_links: Vec<(i32, String, bool)> = match (c.run_id, c.step) {
        (Some(run), Some(step)) => c
            .samples
            .iter()
            .filter_map(|e| e.sample_index)
            .map(|s| {
                let current = c.explanation.as_ref().and_then(|e| e.sample_index) == Some(s);
                (s, with_key(format!("run:{run}@{step}#{s}")), current)
            })
            .collect(),
        _ => Vec::new(),
    };
    let slider = (step_links.len() > 1).then(|| {
        let current = step_links.iter().position(|(s, _)| Some(*s) == c.step).unwrap_or(0);
        let hrefs: Vec<String> = step_links.iter().map(|(_, h)| h.clone()).collect();
        let max = step_links.len() - 1;
        let navigate = use_navigate();
        let labels = step_links.clone();
        view! {
            <div class="step-slider">
                <label>"Training step "
                    <input type="range" min="0" max=max.to_string() value=current.to_string() class="slider"
                        on:change=move |ev| {
                            if let Ok(i) = event_target_value(&ev).parse::<usize>()
                                && let Some(h) = hrefs.get(i)
                            {
                                navigate(h, Default::default());
                            }
                        } />
                </label>
                <span class="steps">
                    {labels.into_iter().map(|(s, h)| {
                        let here = Some(s) == c.step;
                        view! { <a href=h class=if here { "step current" } else { "step" }>{s}</a> " " }
                    }).collect_view()}
                </span>
            </div>
        }
    });
    view! {
        <section class="card column" data-source=c.key.clone()>
            <h3>{c.title.clone()}</h3>
            {slider}
            {(!sample_links.is_empty()).then(|| view! {
                <p class="samples">"Sample: "
                    {sample_links.into_iter().map(|(s, h, current)| view! {
                        <a href=h class=if current { "sample current" } else { "sample" }>{s}</a> " "
                    }).collect_view()}
                </p>
            })}
            {match (&c.explanation, &c.reward) {
                (None, _) => view! { <p class="empty">"No explanation from this source for this question."</p> }.into_any(),
                (Some(e), None) => view! {
                    <p class="muted">"Not scored yet."</p>
                    <div class="text math explanation">{e.completion.clone()}</div>
                }.into_any(),
                (Some(_), Some(r)) => view! { <Scored reward=r.clone() kl_top=kl_top lp_top=lp_top /> }.into_any(),
            }}
        </section>
    }
}

#[component]
fn Scored(reward: RewardRecord, kl_top: f64, lp_top: f64) -> impl IntoView {
    let s = reward.score;
    let thought_hover: Vec<String> = (0..s.thought_kl.len())
        .map(|i| {
            let mut t = String::with_capacity(48);
            t.push_str("KL ");
            fixed3(&mut t, s.thought_kl[i]);
            t.push_str(" = teacher ");
            fixed3(&mut t, s.thought_teacher_logprobs[i]);
            t.push_str(" − student ");
            fixed3(&mut t, s.thought_student_logprobs[i]);
            t
        })
        .collect();
    let solution_hover: Vec<String> = s
        .solution_logprobs
        .iter()
        .map(|lp| {
            let mut t = String::from("student log-prob ");
            fixed3(&mut t, *lp);
            t
        })
        .collect();
    let surprise: Vec<f64> = s.solution_logprobs.iter().map(|lp| -lp).collect();
    view! {
        // An explicit tbody: the browser's parser adds one anyway, and
        // hydration must find exactly the DOM the server sent.
        <table class="breakdown"><tbody>
            <tr><th>"reward"</th><td class="num reward">{fmt_reward(Some(s.reward))}</td></tr>
            <tr><th>"solution log-prob mean / min"</th>
                <td class="num">{format!("{:.3} / {:.3}", s.solution_logprob_mean, s.solution_logprob_min)}</td></tr>
            <tr><th>"thought KL mean / max"</th>
                <td class="num">{format!("{:.3} / {:.3}", s.thought_kl_mean, s.thought_kl_max)}</td></tr>
            <tr><th>"missing end tag penalty"</th><td class="num">{format!("{:.1}", s.match_penalty)}</td></tr>
            <tr><th>"tokens: thought / solution"</th><td class="num">{format!("{} / {}", s.thought_tokens, s.solution_tokens)}</td></tr>
        </tbody></table>
        <h4>"Explanation (thought KL)"</h4>
        <TokenHeatmap tokens=s.thought_token_texts values=s.thought_kl hover=thought_hover lo=0.0 hi=kl_top class="thought" />
        <h4>"Solution given this explanation (surprise)"</h4>
        <TokenHeatmap tokens=s.solution_token_texts values=surprise hover=solution_hover lo=0.0 hi=lp_top class="solution" />
    }
}

#[cfg(test)]
mod tests {
    use super::fixed3;

    #[test]
    fn fixed3_matches_format() {
        for x in [0.0, 1.0, -1.0, 0.0004, -0.0004, 2.3456, -2.3457, 123.4567, -0.9999, f64::NAN, f64::NEG_INFINITY] {
            let mut s = String::new();
            fixed3(&mut s, x);
            let expected = format!("{x:.3}");
            // Values within an ulp of a tie may round the other way; none here.
            assert_eq!(s, if expected == "-0.000" { "0.000".to_owned() } else { expected }, "{x}");
        }
    }
}
