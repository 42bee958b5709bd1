//! The dashboard in a real browser: headless Chromium driven through
//! chromedriver, against the real server on a real Postgres, with the real
//! model doing the work. Screenshots of the key pages land in
//! `target/ui-screenshots/` (or `$RLT_SCREENSHOT_DIR`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use fantoccini::{Client, ClientBuilder, Locator};
use rlt_tests::{TestApp, register_default_model, workspace_root};
use serde_json::{Value, json};

/// Text that would run if any page put model output into the DOM as markup.
const HOSTILE: &str =
    "Let x = 3. <script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\"> so $x^2 = 9$.";

struct Browser {
    client: Client,
    driver: Child,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(which("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (`make test` installs chromium-driver)");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": which("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1360,1800"]
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("could not start headless Chromium: {e}"),
            }
        };
        let shots = std::env::var_os("RLT_SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/ui-screenshots"));
        std::fs::create_dir_all(&shots).unwrap();
        Browser { client, driver, shots }
    }

    async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
        // Live parts (SSE, hover) exist only once the wasm bundle hydrated.
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css("body[data-hydrated=true]"))
            .await
            .unwrap_or_else(|_| panic!("{url} did not hydrate; is static/pkg built (scripts/build-wasm.sh)?"));
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (client-side navigation loads data after the URL changes) until
    /// `css` matches exactly `n` elements.
    async fn wait_count(&self, css: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.count(css).await;
            if seen == n {
                return;
            }
            if Instant::now() > deadline {
                let main = self.client.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
                panic!("{css}: expected {n} elements, saw {seen}; the page says:\n{main}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(mut self) {
        self.client.close().await.ok();
        self.driver.kill().ok();
        self.driver.wait().ok();
    }
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{program} is not installed; `make test` installs it (scripts/install-deps.sh chromium)")
        })
}

/// A two-question dataset whose reference explanations carry markup and
/// math, plus an experiment and a run on it with the default model.
async fn setup(app: &TestApp) -> (i64, i64, i64, Vec<i64>) {
    let lines = [
        json!({"id": "sq-1", "question": "What is 3 squared?", "solution": "3 * 3 = 9", "answer": "9", "reasoning": HOSTILE}),
        json!({"id": "sq-2", "question": "What is 4 squared?", "solution": "4 * 4 = 16", "answer": "16",
               "reasoning": "Multiply 4 by itself: $4 \\cdot 4 = 16$."}),
    ];
    let body = lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n").into_bytes();
    let (status, ds) = app.post_raw("/api/v1/datasets?name=squares", "application/x-ndjson", body).await;
    assert_eq!(status, 201, "{ds}");
    let dataset = ds["id"].as_i64().unwrap();
    let (_, page) = app.get_json(&format!("/api/v1/datasets/{dataset}/questions")).await;
    let qids: Vec<i64> = page["items"].as_array().unwrap().iter().map(|q| q["id"].as_i64().unwrap()).collect();
    let model = register_default_model(&app.db.pool).await;
    let config = json!({"sampling": {"num_samples": 2, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 12},
                        "score_after_generate": true});
    let (status, exp) = app
        .post_json(
            "/api/v1/experiments",
            &json!({"name": "squares-e2e", "teacher_model_id": model, "student_model_id": model,
                    "dataset_id": dataset, "config": config}),
        )
        .await;
    assert_eq!(status, 201, "{exp}");
    let experiment = exp["id"].as_i64().unwrap();
    let (status, run) = app.post_json(&format!("/api/v1/experiments/{experiment}/runs"), &json!({"seed": 3})).await;
    assert_eq!(status, 201, "{run}");
    (dataset, experiment, run["id"].as_i64().unwrap(), qids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_end_to_end_in_headless_chromium() {
    let app = TestApp::spawn_with_workers(1).await;
    let (dataset, experiment, run, qids) = setup(&app).await;
    let b = Browser::start().await;

    // Overview → the dataset's question list.
    b.open(&app.url("/")).await;
    let row = b.text("#datasets tr[data-dataset=squares]").await;
    assert!(row.contains("squares") && row.contains('2'), "{row}");
    b.screenshot("overview").await;
    b.client.find(Locator::Css("#datasets tr[data-dataset=squares] a")).await.unwrap().click().await.unwrap();
    b.client.wait().for_url(&url::Url::parse(&app.url(&format!("/datasets/{dataset}"))).unwrap()).await.unwrap();
    b.wait_count("a[href^='/questions/']", 2).await;
    b.screenshot("questions").await;

    // Start a small generate job from the experiment page and watch it finish
    // on the job page, live: the page is never reloaded.
    b.open(&app.url(&format!("/experiments/{experiment}"))).await;
    b.screenshot("experiment").await;
    let params = b.client.find(Locator::Css(".job-form[data-kind=generate] textarea")).await.unwrap();
    params.clear().await.unwrap();
    params.send_keys(&json!({"run_id": run}).to_string()).await.unwrap();
    b.client
        .find(Locator::Css(".job-form[data-kind=generate] button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let link = b
        .client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(".job-form[data-kind=generate] .ok a"))
        .await
        .expect("the form reports the queued job");
    let job_href = link.attr("href").await.unwrap().expect("a link to the job");
    link.click().await.unwrap();
    b.client.wait().for_url(&url::Url::parse(&app.url(&job_href)).unwrap()).await.unwrap();
    b.client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("body[data-hydrated=true]"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut seen = Vec::new();
    loop {
        let status = b.text(".job-progress .status").await;
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "succeeded" {
            break;
        }
        assert!(!["failed", "cancelled"].contains(&status.as_str()), "job ended {status}: {}", b.text("main").await);
        assert!(Instant::now() < deadline, "the job page never showed the job finishing: {seen:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let bar = b.client.find(Locator::Css(".job-progress [role=progressbar]")).await.unwrap();
    assert_eq!(bar.attr("aria-valuenow").await.unwrap().as_deref(), Some("100"));
    assert_eq!(b.text(".job-progress .counts").await, "2/2");
    b.screenshot("job").await;
    let (_, r) = app.get_json(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(r["status"], "succeeded", "a run's status follows its jobs: {r}");
    // The run's report: one self-contained file with the curves, the reward
    // distribution and the scored explanations.
    let report = app.get(&format!("/runs/{run}/report")).await;
    assert_eq!(report.status().as_u16(), 200);
    let report = report.text().await.unwrap();
    assert!(report.contains("generate/reward_mean") && report.contains("<svg"), "curves are inline SVG");
    assert!(report.contains("scored explanations</th><td class=\"num\">4<"), "4 scored explanations");
    assert!(!report.contains("<script") && !report.contains("<link"), "nothing to fetch: self-contained");
    assert_eq!(app.get("/runs/999999/report").await.status().as_u16(), 404);

    // The question: a reference column and the run's column side by side,
    // each with token heatmaps, and the hostile reference text inert.
    let q = qids[0];
    // By default: the reference next to the run's newest step.
    b.open(&app.url(&format!("/questions/{q}"))).await;
    b.wait_count("#explanation-columns > .column", 2).await;
    let tokens = b.count(".column[data-source^='run:'] .heatmap.thought .tok").await;
    assert!(tokens > 0, "the run's explanation has a per-token KL heatmap");
    assert!(b.count(".column[data-source^='run:'] .heatmap.solution .tok").await > 0, "and one on the solution");
    assert!(b.count(".legend .legend-bar").await > 0, "with a colour legend");
    let reference = b.text(".column[data-source^='ref:']").await;
    assert!(reference.contains("<script>window.__pwned = 1</script>"), "markup shows as text: {reference}");
    let pwned = b.client.execute("return window.__pwned === undefined", vec![]).await.unwrap();
    assert_eq!(pwned, Value::Bool(true), "no script from model text ran");
    assert_eq!(b.count(".column img").await, 0, "no element was made from model text");
    // Hover a token: its numbers appear under the heatmap.
    let token = b.client.find(Locator::Css(".column[data-source^='run:'] .heatmap.thought .tok")).await.unwrap();
    let title = token.attr("title").await.unwrap().unwrap_or_default();
    assert!(title.contains("KL"), "the tooltip gives the token's KL: {title}");
    let hover = MouseActions::new("mouse".to_owned()).then(PointerAction::MoveToElement {
        element: token,
        duration: None,
        x: 0.0,
        y: 0.0,
    });
    b.client.perform_actions(hover).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = b.text(".column[data-source^='run:'] .tok-info").await;
        if info == title {
            break;
        }
        if Instant::now() > deadline {
            let js = b.client.execute("var t = document.querySelector(\".column[data-source^='run:'] .heatmap.thought .tok\"); t.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})); return [document.body.outerHTML.length, document.querySelector(\".column[data-source^='run:'] .tok-info\").textContent, window.__errors || null];", vec![]).await.unwrap();
            panic!("hovering did not show the token's values (saw {info:?}); dispatch: {js}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.screenshot("question").await;

    // The run page charts what the job recorded.
    b.open(&app.url(&format!("/runs/{run}"))).await;
    assert!(b.count("figure.chart[data-metric='generate/reward_mean'] svg").await == 1, "{}", b.text("main").await);
    b.screenshot("run").await;

    b.close().await;
}
