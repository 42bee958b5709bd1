//! The questions of one dataset, with search and paging. State lives in the
//! URL (`?q=…&cursor=…`), so every view is a shareable link and the search
//! form works without JavaScript.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use rlt_types::QuestionFilter;

use super::error_message;
use crate::api::{get_dataset, list_questions};
use crate::components::ErrorBox;

#[component]
pub fn DatasetPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok());
    let filter = move || {
        let q = query.read();
        QuestionFilter { q: q.get("q"), cursor: q.get("cursor"), limit: None }
    };
    let data = Resource::new(
        move || (id(), filter()),
        |(id, filter)| async move {
            let Some(id) = id else {
                return Err(ServerFnError::new("the dataset id in the address is not a number"));
            };
            let dataset = get_dataset(id).await?;
            let page = list_questions(id, filter.clone()).await?;
            Ok((dataset, page, filter))
        },
    );
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading questions…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <Title text="Error" /> <ErrorBox message=error_message(&e) /> }.into_any(),
                    Ok((dataset, page, filter)) => {
                        let search = filter.q.clone().unwrap_or_default();
                        let next = page.next_cursor.clone().map(|c| {
                            let mut href = format!("/datasets/{}?cursor={c}", dataset.id);
                            if !search.is_empty() {
                                href.push_str("&q=");
                                href.push_str(&urlencode(&search));
                            }
                            href
                        });
                        let empty = page.items.is_empty();
                        view! {
                            <Title text=dataset.name.clone() />
                            <p class="crumbs"><a href="/">"Datasets"</a> " / " {dataset.name.clone()}</p>
                            <h1>{dataset.name.clone()}</h1>
                            <p class="muted">
                                {format!("{} questions · source: {}", dataset.question_count, dataset.source.as_str())}
                                {(!dataset.description.is_empty()).then(|| format!(" · {}", dataset.description))}
                            </p>
                            <form method="get" class="search">
                                <input type="search" name="q" value=search.clone() placeholder="Search question text or id" />
                                <button type="submit">"Search"</button>
                            </form>
                            {empty.then(|| view! { <p class="empty">"No questions match this search."</p> })}
                            <table class="list" id="questions">
                                <thead>
                                    <tr>
                                        <th class="num">"#"</th>
                                        <th>"Id"</th>
                                        <th>"Category"</th>
                                        <th>"Question"</th>
                                        <th>"Answer"</th>
                                        <th class="num">"Refs"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {page.items.into_iter().map(|q| view! {
                                        <tr>
                                            <td class="num">{q.ordinal + 1}</td>
                                            <td><a href=format!("/questions/{}", q.id)>{q.source_key.clone().unwrap_or_else(|| q.id.to_string())}</a></td>
                                            <td>{q.category.clone()}</td>
                                            <td class="question-text">{truncate(&q.question, 160)}</td>
                                            <td>{q.answer.clone()}</td>
                                            <td class="num">{q.reference_count}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            {next.map(|href| view! { <p><a class="next" href=href>"Next page →"</a></p> })}
                        }.into_any()
                    }
                }
            })}
        </Suspense>
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
