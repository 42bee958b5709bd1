//! `rlt-load`: many concurrent clients reading pages of a running RLT Studio,
//! reporting throughput and latency percentiles. `make load` runs it while a
//! worker is busy generating, as the load target asks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Concurrent read load against an RLT Studio server")]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Mean pause between a client's requests, as a person reading a page
    /// would take (each pause is uniform in 0.5×–1.5× of it). 0 makes every
    /// client fire back to back, which measures saturation instead.
    #[arg(long, default_value_t = 1000)]
    think_ms: u64,
    /// Fail (exit 1) when the p95 latency is above this many milliseconds.
    #[arg(long)]
    max_p95_ms: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.clients).build()?;
    let paths = Arc::new(discover(&client, &args.url).await?);
    println!(
        "{} clients, {} ms think time, {} s, over {} paths, e.g. {}",
        args.clients,
        args.think_ms,
        args.seconds,
        paths.len(),
        paths[0]
    );
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, paths, url, think_ms) = (client.clone(), paths.clone(), args.url.clone(), args.think_ms);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut i = c;
            // Spread the first requests over one think time, as users arrive.
            let mut rng = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut pause = |scale: f64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                Duration::from_secs_f64(think_ms as f64 / 1000.0 * scale * (rng % 1000) as f64 / 1000.0)
            };
            tokio::time::sleep(pause(1.0)).await;
            while Instant::now() < deadline {
                let path = &paths[i % paths.len()];
                i += 7;
                let started = Instant::now();
                match client.get(format!("{url}{path}")).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        // Read the whole body: that is what a browser waits for.
                        if resp.bytes().await.is_err() {
                            errors += 1;
                        }
                    }
                    _ => errors += 1,
                }
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                if think_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(think_ms / 2) + pause(1.0)).await;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1];
    let p95 = pct(0.95);
    println!(
        "requests {}  errors {}  throughput {:.0}/s  latency ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        all.len(),
        errors,
        all.len() as f64 / args.seconds as f64,
        pct(0.50),
        p95,
        pct(0.99),
        all.last().copied().unwrap_or(f64::NAN)
    );
    if errors > 0 {
        anyhow::bail!("{errors} requests failed");
    }
    if let Some(max) = args.max_p95_ms
        && p95 > max
    {
        anyhow::bail!("p95 {p95:.1} ms is above {max} ms");
    }
    Ok(())
}

/// Question pages (API and HTML), question details and explanation lists of
/// every dataset the server has.
async fn discover(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<String>> {
    let datasets: Vec<Value> = client.get(format!("{url}/api/v1/datasets")).send().await?.json().await?;
    anyhow::ensure!(!datasets.is_empty(), "the server has no datasets to read");
    let mut paths = Vec::new();
    for d in &datasets {
        let id = &d["id"];
        let mut cursor: Option<String> = None;
        for _ in 0..3 {
            let page_path = match &cursor {
                Some(c) => format!("/api/v1/datasets/{id}/questions?limit=50&cursor={c}"),
                None => format!("/api/v1/datasets/{id}/questions?limit=50"),
            };
            let page: Value = client.get(format!("{url}{page_path}")).send().await?.json().await?;
            for q in page["items"].as_array().into_iter().flatten().take(5) {
                paths.push(format!("/api/v1/questions/{}", q["id"]));
                paths.push(format!("/questions/{}", q["id"]));
                paths.push(format!("/api/v1/explanations?question_id={}", q["id"]));
            }
            paths.push(page_path);
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        paths.push(format!("/datasets/{id}"));
        paths.push(format!("/api/v1/explanations?dataset_id={id}&limit=50"));
    }
    Ok(paths)
}
