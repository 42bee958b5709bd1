//! One question: its text, solution and answer, and the reference
//! explanations that came with the data.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use super::error_message;
use crate::api::get_question;
use crate::components::ErrorBox;

#[component]
pub fn QuestionPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok());
    let question = Resource::new(id, |id| async move {
        match id {
            Some(id) => get_question(id).await,
            None => Err(ServerFnError::new("the question id in the address is not a number")),
        }
    });
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading question…"</p> }>
            {move || Suspend::new(async move {
                match question.await {
                    Err(e) => view! { <Title text="Error" /> <ErrorBox message=error_message(&e) /> }.into_any(),
                    Ok(q) => {
                        let title = q.source_key.clone().unwrap_or_else(|| format!("Question {}", q.id));
                        view! {
                            <Title text=title.clone() />
                            <p class="crumbs">
                                <a href="/">"Datasets"</a> " / "
                                <a href=format!("/datasets/{}", q.dataset_id)>{q.dataset_name.clone()}</a>
                                " / " {title.clone()}
                            </p>
                            <h1>{title}</h1>
                            <section class="card">
                                <h2>"Question"</h2>
                                <div class="text" id="question-text">{q.question.clone()}</div>
                            </section>
                            <section class="card">
                                <h2>"Solution"</h2>
                                <div class="text" id="solution-text">{q.solution.clone()}</div>
                                {q.answer.clone().map(|a| view! { <p><strong>"Answer: "</strong> {a}</p> })}
                            </section>
                            <h2>{format!("Reference explanations ({})", q.references.len())}</h2>
                            {q.references.is_empty().then(|| view! {
                                <p class="empty">"This question came without reference explanations."</p>
                            })}
                            <div class="columns">
                                {q.references.into_iter().map(|r| view! {
                                    <section class="card column">
                                        <h3>{r.label.clone()}</h3>
                                        {r.author.clone().map(|a| view! { <p class="muted">{format!("by {a}")}</p> })}
                                        <div class="text">{r.text.clone()}</div>
                                    </section>
                                }).collect_view()}
                            </div>
                        }.into_any()
                    }
                }
            })}
        </Suspense>
    }
}
