//! `rlt-bench-pages`: server-side render time of the heaviest dashboard
//! page, a question with 8 explanations of about 1,000 tokens each, every
//! one with its per-token heatmaps. `make bench` runs it against a
//! throwaway Postgres (DATABASE_URL).
//!
//! The explanations and their per-token values are written straight into
//! the database: this measures rendering, not the model.

use std::time::{Duration, Instant};

use clap::Parser;
use rlt_server::explanations::{self, NewReward, NewTeacherExplanation};
use rlt_server::jobs::queue::{self, NewJob};
use rlt_tests::{TestApp, register_default_model};
use rlt_types::ScoreResult;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Server render time of a question page with 8 long explanations")]
struct Args {
    /// Explanations (columns) on the page.
    #[arg(long, default_value_t = 8)]
    columns: usize,
    /// Tokens per explanation.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// Timed requests, after 10 warm-up ones.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Exit 1 when the p95 is above this many milliseconds.
    #[arg(long)]
    max_p95_ms: Option<f64>,
}

/// Deterministic values in [0, 1) (xorshift), so runs are comparable.
struct Values(u64);

impl Values {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 10_000) as f64 / 10_000.0
    }
}

/// An explanation-like text of `n` tokens, with the token pieces.
fn explanation(n: usize, seed: usize) -> (String, Vec<String>) {
    const WORDS: [&str; 12] =
        [" We", " add", " the", " two", " numbers", ",", " then", " multiply", " by", " 3", " to get", ".\n\n"];
    let pieces: Vec<String> = (0..n).map(|i| WORDS[(i * 7 + seed) % WORDS.len()].to_owned()).collect();
    (pieces.concat(), pieces)
}

/// One HTTP/1.0 GET (so the body is not chunked) on a fresh connection;
/// the body on a 200.
fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8(response)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP header"))?;
    anyhow::ensure!(head.split(' ').nth(1) == Some("200"), "GET {path}: {}", head.lines().next().unwrap_or(""));
    Ok(body.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = TestApp::spawn().await;
    let (_, run, qids) = app.small_experiment(1, json!({})).await;
    let q = qids[0];
    let model = register_default_model(&app.db.pool).await;
    let params = json!({"run_id": run});
    let job = queue::submit(
        &app.db.pool,
        NewJob { kind: "generate", params: &params, run_id: Some(run), device: "any", priority: 0, max_attempts: 1 },
    )
    .await?;
    let mut values = Values(0x9E37_79B9_7F4A_7C15);
    for sample in 0..args.columns {
        let (text, pieces) = explanation(args.tokens, sample);
        let id = explanations::insert_teacher(
            &app.db.pool,
            NewTeacherExplanation {
                question_id: q,
                run_id: run,
                job_id: job.id,
                step: 0,
                sample_index: sample as i32,
                seed: sample as i64,
                sampling: &json!({}),
                completion: &text,
                finish_reason: "stop",
                num_tokens: args.tokens as i32,
            },
        )
        .await?;
        let teacher: Vec<f64> = (0..args.tokens).map(|_| -3.0 * values.next()).collect();
        let student: Vec<f64> = (0..args.tokens).map(|_| -4.0 * values.next()).collect();
        let kl: Vec<f64> = teacher.iter().zip(&student).map(|(t, s)| t - s).collect();
        let solution: Vec<f64> = (0..64).map(|_| -2.0 * values.next()).collect();
        let score = ScoreResult {
            reward: -values.next(),
            solution_logprob_mean: solution.iter().sum::<f64>() / solution.len() as f64,
            solution_logprob_min: solution.iter().copied().fold(0.0, f64::min),
            thought_kl_mean: kl.iter().sum::<f64>() / kl.len() as f64,
            thought_kl_max: kl.iter().copied().fold(f64::MIN, f64::max),
            match_penalty: 0.0,
            solution_tokens: solution.len(),
            thought_tokens: args.tokens,
            solution_token_texts: (0..solution.len()).map(|i| format!(" {i}")).collect(),
            solution_logprobs: solution,
            thought_token_texts: pieces,
            thought_teacher_logprobs: teacher,
            thought_student_logprobs: student,
            thought_kl: kl,
        };
        explanations::insert_reward(
            &app.db.pool,
            NewReward {
                explanation_id: id,
                teacher_model_id: model,
                student_model_id: model,
                reward_config: &json!({}),
                reward_config_hash: "bench",
                job_id: Some(job.id),
                score: &score,
            },
        )
        .await?;
    }
    let cols: Vec<String> = (0..args.columns).map(|s| format!("cols=run:{run}%400%23{s}")).collect();
    let path = format!("/questions/{q}?{}", cols.join("&"));
    // The client runs on its own OS thread with plain blocking HTTP, so it
    // never competes with the server for the async runtime's threads.
    let (addr, requests, min_cells) = (app.addr, args.requests, args.columns * args.tokens);
    let (times, html_bytes) = std::thread::spawn(move || -> anyhow::Result<(Vec<Duration>, usize)> {
        let mut times = Vec::with_capacity(requests);
        let mut html_bytes = 0;
        for i in 0..requests + 10 {
            let start = Instant::now();
            let body = http_get(addr, &path)?;
            let elapsed = start.elapsed();
            anyhow::ensure!(
                body.matches("class=\"tok h").count() >= min_cells,
                "the page does not show every token's heatmap cell"
            );
            html_bytes = body.len();
            if i == 0
                && let Some(path) = std::env::var_os("RLT_BENCH_SAVE_HTML")
            {
                std::fs::write(path, &body)?;
            }
            if i >= 10 {
                times.push(elapsed);
            }
        }
        Ok((times, html_bytes))
    })
    .join()
    .expect("the client thread")?;
    let mut times = times;
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = ms(pct(0.95));
    println!(
        "question page, {} explanations × {} tokens with heatmaps: {} requests, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms, {:.0} KB of HTML",
        args.columns,
        args.tokens,
        times.len(),
        ms(pct(0.5)),
        p95,
        ms(*times.last().unwrap()),
        html_bytes as f64 / 1024.0
    );
    if let Some(max) = args.max_p95_ms
        && p95 > max
    {
        anyhow::bail!("p95 {p95:.1} ms is above {max} ms");
    }
    Ok(())
}
