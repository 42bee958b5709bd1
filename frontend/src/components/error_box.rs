use leptos::prelude::*;

/// Says plainly what went wrong, with a way back.
#[component]
pub fn ErrorBox(message: String) -> impl IntoView {
    view! {
        <div class="error-box" role="alert">
            <strong>"Something went wrong. "</strong>
            <span>{message}</span>
            " "
            <a href="/">"Back to datasets"</a>
        </div>
    }
}
