//! The `rlt` binary end to end: embedded Postgres, demo data, SIGTERM and
//! restart, and CLI imports that fail cleanly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rlt_tests::{TestDb, champ_file, rlt_binary};
use serde_json::{Value, json};

/// Starts `rlt serve` on a free port and waits for the URL it prints.
fn start_server(data_dir: &Path) -> (Child, String) {
    let mut child = Command::new(rlt_binary())
        .args(["serve", "--port", "0"])
        .env("RLT_DATA_DIR", data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rlt serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("running at ").map(|(_, u)| u.trim().trim_end_matches('/').to_owned()))
        .expect("rlt serve prints its URL");
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

fn stop_with_sigterm(mut child: Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "rlt serve exits cleanly on SIGTERM, got {status}");
            return;
        }
        assert!(Instant::now() < deadline, "rlt serve did not stop within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn datasets(client: &reqwest::Client, url: &str) -> Vec<Value> {
    client.get(format!("{url}/api/v1/datasets")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn serve_embedded_keeps_rows_across_sigterm_and_restart() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("datasets/champ")).unwrap();
    std::fs::copy(champ_file(), dir.join("datasets/champ/v0.json")).unwrap();
    let client = reqwest::Client::new();

    let (child, url) = start_server(&dir);
    let first = datasets(&client, &url).await;
    let counts: Vec<(String, i64)> =
        first.iter().map(|d| (d["name"].as_str().unwrap().to_owned(), d["question_count"].as_i64().unwrap())).collect();
    assert!(counts.contains(&("champ".to_owned(), 270)), "{counts:?}");
    assert!(counts.iter().any(|(n, c)| n == "arithmetic-demo" && *c > 0), "{counts:?}");
    let ready: Value = client.get(format!("{url}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    // A row written through the API must survive the restart too.
    let created = client
        .post(format!("{url}/api/v1/datasets"))
        .json(&json!({"source": "synthetic", "name": "kept", "seed": 1, "count": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    stop_with_sigterm(child);
    assert!(!dir.join("pg/data/postmaster.pid").exists(), "the embedded Postgres was stopped");

    // Two servers on one data directory: the one that started the cluster
    // must not stop it under the other when it exits first.
    let (child, _) = start_server(&dir);
    let (other, other_url) = start_server(&dir);
    stop_with_sigterm(child);
    let ready = client.get(format!("{other_url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "the second server lost its database");
    let second = datasets(&client, &other_url).await;
    stop_with_sigterm(other);
    assert!(!dir.join("pg/data/postmaster.pid").exists(), "the last server stopped the embedded Postgres");
    assert_eq!(second.len(), first.len() + 1, "demo data is not imported twice");
    assert!(second.iter().any(|d| d["name"] == "kept" && d["question_count"] == 5));
    for d in &first {
        assert!(second.iter().any(|e| e["name"] == d["name"] && e["question_count"] == d["question_count"]));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn cli_import_reports_bad_line_and_changes_nothing() {
    let db = TestDb::new().await;
    let dir = tempdir();
    let file = dir.join("bad.jsonl");
    let mut lines: Vec<String> =
        (1..=60).map(|i| json!({"prompt": format!("q{i}"), "solution": format!("s{i}")}).to_string()).collect();
    lines[56] = r#"{"prompt": "q57", "solution": ["not", "text"]}"#.to_owned();
    std::fs::write(&file, lines.join("\n")).unwrap();

    let out = Command::new(rlt_binary())
        .args(["import", "jsonl"])
        .arg(&file)
        .args(["--name", "bad"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.jsonl:57: field `solution`"), "{stderr}");
    assert_eq!(db.count("datasets").await, 0);
    assert_eq!(db.count("questions").await, 0);

    // The good half of the file imports once fixed.
    lines[56] = json!({"prompt": "q57", "solution": "s57"}).to_string();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = Command::new(rlt_binary())
        .args(["import", "jsonl"])
        .arg(&file)
        .args(["--name", "good"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("60 questions"));
    assert_eq!(db.count("questions").await, 60);
    std::fs::remove_dir_all(&dir).ok();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rlt-cli-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn cli_score_writes_one_line_per_input_and_names_bad_lines() {
    let dir = tempdir();
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    let good = json!({"question": "What is 3 + 5?", "solution": "3 + 5 = 8.", "completion": "Add three and five.<|end_of_explanation|>"});
    let lines = [good.to_string(), r#"{"question": "q", "solution": 5}"#.to_owned(), String::new(), good.to_string()];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(rlt_binary())
        .args(["score", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .env("RLT_DATA_DIR", rlt_tests::data_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad line makes the exit status non-zero");
    assert!(stderr.contains("line 2"), "{stderr}");
    let results: Vec<Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 3, "one result per non-blank input line");
    assert_eq!(results[1]["line"], 2);
    assert!(results[1]["error"].as_str().unwrap().contains("solution"));
    for r in [&results[0], &results[2]] {
        assert!(r["reward"].as_f64().unwrap().is_finite());
        assert_eq!(r["solution_tokens"].as_u64().unwrap() as usize, r["solution_logprobs"].as_array().unwrap().len());
    }
    assert_eq!(results[0]["reward"], results[2]["reward"], "scoring is deterministic");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cli_generate_checks_its_settings_before_loading_and_reports_output_errors() {
    // Checked before the model loads: a missing model is not what it says.
    let out = Command::new(rlt_binary())
        .args(["generate", "--model", "/nonexistent.gguf", "--prompt", "hi", "--top-p", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("top_p must be in (0, 1], got 2"), "{stderr}");

    // A full disk is an error message, not a panic.
    let out = Command::new(rlt_binary())
        .args(["generate", "--prompt", "hi", "--max-new-tokens", "2"])
        .env("RLT_DATA_DIR", rlt_tests::data_dir())
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writing to standard output") && !stderr.contains("panicked"), "{stderr}");
}

/// `rlt logprobs` on a text longer than one pass (512 tokens): JSON with
/// every token, the first without a log-prob, and a sum that adds up.
#[test]
fn cli_logprobs_scores_a_long_text_in_passes() {
    let text = "The robot counted 17 gears and then wrote x^2 + 1. ".repeat(60);
    let out = Command::new(rlt_binary())
        .args(["logprobs", "--temperature", "0.7", "--text", &text])
        .env("RLT_DATA_DIR", rlt_tests::data_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    assert!(tokens.len() > 600, "{}", tokens.len());
    assert!(tokens[0]["logprob"].is_null());
    let lps: Vec<f64> = tokens[1..].iter().map(|t| t["logprob"].as_f64().expect("a number")).collect();
    assert!(lps.iter().all(|&lp| lp <= 0.0));
    let sum: f64 = lps.iter().sum();
    assert!((sum - v["sum_logprob"].as_f64().unwrap()).abs() < 1e-3 * sum.abs().max(1.0));
    // The model picks up the repetition: after the first pass (512 tokens)
    // the sentence is far likelier than at its first occurrence.
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let (first, late) = (mean(&lps[..14]), mean(&lps[550..]));
    assert!(late > first + 1.0 && late > -0.5, "mean log-prob {first} at first, {late} after the first pass");
}

#[test]
fn a_data_dir_that_is_a_file_is_named_as_such() {
    let file = tempdir().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(rlt_binary()).arg("--data-dir").arg(&file).args(["serve", "--no-demo"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a directory") && !stderr.contains("File exists"), "{stderr}");
}
