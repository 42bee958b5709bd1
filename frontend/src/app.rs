//! The HTML shell and the router. Each page lives in its own file under
//! `pages/`.

use leptos::prelude::*;
use leptos_meta::{MetaTags, Title, provide_meta_context};
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::{SsrMode, path};

use crate::pages::{ExperimentPage, JobPage, NotFound, OverviewPage, QuestionBrowserPage, QuestionPage, RunPage};

/// Renders `$…$` and `$$…$$` math with the vendored KaTeX. It reads text
/// nodes only, so escaped model text stays text. KaTeX rewrites the DOM, so
/// on hydrated pages it waits for `rlt:hydrated` (see `PageReady`) and then
/// follows client-side navigation; without the wasm bundle it runs at once.
const KATEX_INIT: &str = r#"(function(){
var opts={delimiters:[{left:"$$",right:"$$",display:true},{left:"\\[",right:"\\]",display:true},{left:"$",right:"$",display:false},{left:"\\(",right:"\\)",display:false}],throwOnError:false};
function render(){if(!window.renderMathInElement)return;document.querySelectorAll(".math:not([data-math])").forEach(function(e){e.setAttribute("data-math","");renderMathInElement(e,opts)})}
var watching=false;
window.addEventListener("rlt:hydrated",function(){render();if(watching)return;watching=true;var t=null;new MutationObserver(function(){clearTimeout(t);t=setTimeout(render,30)}).observe(document.body,{childList:true,subtree:true})});
document.addEventListener("DOMContentLoaded",function(){if(!window.rltHydrates)render()});
})();"#;

/// The document around the app. `hydrate` adds the wasm bundle's scripts; the
/// server passes false when no bundle has been built, and pages still read
/// fine without it.
pub fn shell(options: LeptosOptions, hydrate: bool) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" href="data:," />
                <link rel="stylesheet" href="/static/style.css" />
                <link rel="stylesheet" href="/static/vendor/katex/dist/katex.min.css" />
                <script defer src="/static/vendor/katex/dist/katex.min.js"></script>
                <script defer src="/static/vendor/katex/dist/contrib/auto-render.min.js"></script>
                <script>{KATEX_INIT}</script>
                {hydrate.then(|| view! {
                    <script>"window.rltHydrates=true;"</script>
                    <HydrationScripts options=options.clone() />
                })}
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Title formatter=|page: String| format!("{page} · RLT Studio") />
        <Router>
            <header class="topbar">
                <A href="/" attr:class="brand">"RLT Studio"</A>
                <nav>
                    <A href="/">"Overview"</A>
                    <a href="/api/v1/docs">"API"</a>
                </nav>
            </header>
            <main>
                // Async mode: the server sends each page only once its data is
                // in, so it reads completely without JavaScript.
                <Routes fallback=|| view! { <NotFound /> }>
                    <Route path=path!("/") view=OverviewPage ssr=SsrMode::Async />
                    <Route path=path!("/datasets/:id") view=QuestionBrowserPage ssr=SsrMode::Async />
                    <Route path=path!("/questions/:id") view=QuestionPage ssr=SsrMode::Async />
                    <Route path=path!("/experiments/:id") view=ExperimentPage ssr=SsrMode::Async />
                    <Route path=path!("/jobs/:id") view=JobPage ssr=SsrMode::Async />
                    <Route path=path!("/runs/:id") view=RunPage ssr=SsrMode::Async />
                </Routes>
            </main>
        </Router>
    }
}
