//! The first page: every dataset with its question count.

use leptos::prelude::*;
use leptos_meta::Title;

use super::error_message;
use crate::api::list_datasets;
use crate::components::ErrorBox;

#[component]
pub fn DatasetsPage() -> impl IntoView {
    let datasets = Resource::new(|| (), |_| list_datasets());
    view! {
        <Title text="Datasets" />
        <h1>"Datasets"</h1>
        <Suspense fallback=|| view! { <p class="muted">"Loading datasets…"</p> }>
            {move || Suspend::new(async move {
                match datasets.await {
                    Err(e) => view! { <ErrorBox message=error_message(&e) /> }.into_any(),
                    Ok(list) if list.is_empty() => view! {
                        <div class="empty">
                            <p>"No datasets yet."</p>
                            <p>
                                "Import one with " <code>"rlt import champ"</code> ", "
                                <code>"rlt import jsonl FILE --name NAME"</code> " or "
                                <code>"rlt import synthetic --name NAME"</code>
                                ", or POST to " <code>"/api/v1/datasets"</code> "."
                            </p>
                        </div>
                    }.into_any(),
                    Ok(list) => view! {
                        <table class="list" id="datasets">
                            <thead>
                                <tr>
                                    <th>"Name"</th>
                                    <th>"Source"</th>
                                    <th class="num">"Questions"</th>
                                    <th class="num">"Reference explanations"</th>
                                    <th>"Description"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {list.into_iter().map(|d| view! {
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
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}
