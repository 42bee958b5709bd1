//! Tells the document a page has hydrated: marks `<body data-hydrated>`
//! (browser tests wait for it) and fires `rlt:hydrated`, on which the shell
//! renders math. KaTeX rewrites the DOM, so it must run after hydration has
//! claimed the server's nodes, never before.

use leptos::prelude::*;

/// Place last inside a page's `<Suspense>`, so it mounts after the page's
/// data has hydrated.
#[component]
pub fn PageReady() -> impl IntoView {
    #[cfg(feature = "hydrate")]
    Effect::new(|_| {
        if let Some(body) = document().body() {
            let _ = body.set_attribute("data-hydrated", "true");
        }
        if let Ok(event) = leptos::web_sys::Event::new("rlt:hydrated") {
            let _ = window().dispatch_event(&event);
        }
    });
}
