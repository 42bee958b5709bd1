//! Live updates in the browser through Server-Sent Events. On the server
//! these do nothing: the page is rendered with the state of the moment.

/// A handler of one named event, given the event's data.
pub type Handler = (&'static str, Box<dyn Fn(String)>);

/// Listens to `url`'s named events until the owning component goes away.
#[cfg(feature = "hydrate")]
pub fn subscribe(url: &str, handlers: Vec<Handler>) {
    use wasm_bindgen::JsCast;
    use wasm_bindgen::prelude::Closure;

    let Ok(source) = web_sys::EventSource::new(url) else { return };
    let mut closures = Vec::new();
    for (name, handler) in handlers {
        let closure = Closure::<dyn Fn(web_sys::MessageEvent)>::new(move |event: web_sys::MessageEvent| {
            if let Some(data) = event.data().as_string() {
                handler(data);
            }
        });
        let _ = source.add_event_listener_with_callback(name, closure.as_ref().unchecked_ref());
        closures.push(closure);
    }
    let source = send_wrapper::SendWrapper::new((source, closures));
    leptos::prelude::on_cleanup(move || source.0.close());
}

#[cfg(not(feature = "hydrate"))]
pub fn subscribe(_url: &str, _handlers: Vec<Handler>) {}
