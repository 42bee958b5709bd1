//! The data behind each dashboard page, one function per page, built from
//! the same domain functions as the REST API.

use rlt_types::{
    CheckpointInfo, Column, ExperimentView, ExplanationSummary, JobStatus, JobView, MetricPoint, OverviewView,
    QuestionBrowse, QuestionBrowseView, QuestionRow, QuestionView, RunCard, RunView, SourceOption,
};
use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::jobs::queue::{self, JobFilter};
use crate::jobs::registry::Registry;
use crate::{datasets, experiments, explanations, models, questions, runs};

pub const PAGE_SIZE: u32 = 50;
/// Side-by-side columns on a question page: a GRPO group of 8 fits.
pub const MAX_COLUMNS: usize = 8;
const RECENT_RUNS: usize = 8;

pub async fn overview(db: &PgPool) -> Result<OverviewView> {
    let mut recent_runs = Vec::new();
    for run in runs::list(db, None).await?.into_iter().take(RECENT_RUNS) {
        let reward_trend = reward_trend(db, run.id).await?;
        recent_runs.push(RunCard { run, reward_trend });
    }
    let mut active_jobs = Vec::new();
    for status in [JobStatus::Running, JobStatus::Queued] {
        let filter = JobFilter { status: Some(status), limit: 20, ..Default::default() };
        active_jobs.extend(queue::list(db, &filter).await?.items);
    }
    Ok(OverviewView {
        datasets: datasets::list(db).await?,
        experiments: experiments::list(db).await?,
        recent_runs,
        active_jobs,
    })
}

/// The run's reward means in step order, from whichever reward metric it
/// recorded most (training, generation or scoring).
async fn reward_trend(db: &PgPool, run_id: i64) -> Result<Vec<(i64, f64)>> {
    let rows = sqlx::query!(
        r#"WITH best AS (
               SELECT name FROM metrics WHERE run_id = $1 AND name LIKE '%reward_mean'
               GROUP BY name ORDER BY count(*) DESC, name LIMIT 1)
           SELECT step, value FROM metrics WHERE run_id = $1 AND name = (SELECT name FROM best)
           ORDER BY step"#,
        run_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().filter(|r| r.value.is_finite()).map(|r| (r.step, r.value)).collect())
}

pub async fn experiment(db: &PgPool, registry: &Registry, id: i64) -> Result<ExperimentView> {
    let experiment = experiments::get(db, id).await?;
    Ok(ExperimentView {
        dataset: datasets::get(db, experiment.dataset_id).await?,
        teacher: models::get(db, experiment.teacher_model_id).await?,
        student: models::get(db, experiment.student_model_id).await?,
        versions: experiments::versions(db, id).await?,
        runs: runs::list(db, Some(id)).await?,
        job_kinds: registry.describe(),
        experiment,
    })
}

pub async fn job(db: &PgPool, id: i64) -> Result<JobView> {
    let job = queue::get(db, id).await?;
    let run = match job.run_id {
        Some(run_id) => Some(runs::get(db, run_id).await?),
        None => None,
    };
    Ok(JobView { logs: queue::logs(db, id, 0, 2000).await?, job, run })
}

pub async fn run(db: &PgPool, id: i64, overlay: &[i64]) -> Result<RunView> {
    let run = runs::get(db, id).await?;
    let metrics = runs::metrics(db, id, None).await?;
    let checkpoints =
        sqlx::query!("SELECT id, step, uri, sha256, created_at FROM checkpoints WHERE run_id = $1 ORDER BY step", id)
            .fetch_all(db)
            .await?
            .into_iter()
            .map(|c| CheckpointInfo {
                id: c.id,
                step: c.step,
                uri: c.uri,
                sha256: c.sha256,
                created_at: c.created_at.to_rfc3339(),
            })
            .collect();
    let jobs = queue::list(db, &JobFilter { run_id: Some(id), limit: 50, ..Default::default() }).await?.items;
    let other_runs: Vec<_> = runs::list(db, None).await?.into_iter().filter(|r| r.id != id).take(50).collect();
    let mut overlays = Vec::new();
    for &other in overlay.iter().filter(|&&o| o != id).take(5) {
        let other_run = runs::get(db, other).await?;
        let points: Vec<MetricPoint> = runs::metrics(db, other, None).await?;
        overlays.push((other_run, points));
    }
    let dataset_id = experiments::get(db, run.experiment_id).await?.dataset_id;
    Ok(RunView { run, metrics, checkpoints, jobs, other_runs, overlays, dataset_id })
}

/// `3` or `3@32`: a run, optionally at a training step.
fn parse_run_ref(s: Option<&str>, field: &'static str) -> Result<(Option<i64>, Option<i32>)> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else { return Ok((None, None)) };
    let bad = || Error::bad_request(field, format!("{field} must be a run id, optionally with @step (e.g. 3@32)"));
    let (run, step) = match s.split_once('@') {
        Some((r, st)) => (r, Some(st.parse::<i32>().map_err(|_| bad())?)),
        None => (s, None),
    };
    Ok((Some(run.parse::<i64>().map_err(|_| bad())?), step))
}

pub async fn browse(db: &PgPool, dataset_id: i64, b: &QuestionBrowse) -> Result<QuestionBrowseView> {
    let dataset = datasets::get(db, dataset_id).await?;
    let (run_a, step_a) = parse_run_ref(b.run_a.as_deref(), "run_a")?;
    let (run_b, step_b) = parse_run_ref(b.run_b.as_deref(), "run_b")?;
    let sort = b.sort.as_deref().unwrap_or("order");
    if !["order", "reward_a", "reward_b", "diff", "-diff"].contains(&sort) {
        return Err(Error::bad_request("sort", "sort must be one of order, reward_a, reward_b, diff, -diff"));
    }
    let has = match b.has_explanations.as_deref() {
        None | Some("") => None,
        Some("yes") => Some(true),
        Some("no") => Some(false),
        Some(_) => return Err(Error::bad_request("has_explanations", "has_explanations must be yes or no")),
    };
    let page = b.page.unwrap_or(1).max(1);
    let pattern =
        b.q.as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(|q| format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let rows = sqlx::query!(
        r#"WITH latest AS (
               SELECT e.id, e.question_id, e.run_id, e.step,
                      (SELECT reward FROM rewards r WHERE r.explanation_id = e.id ORDER BY r.id DESC LIMIT 1) AS reward
               FROM explanations e JOIN questions q ON q.id = e.question_id WHERE q.dataset_id = $1),
           a AS (SELECT question_id, avg(reward) AS reward FROM latest
                 WHERE run_id = $2 AND step = coalesce($3, (SELECT max(step) FROM explanations WHERE run_id = $2))
                 GROUP BY question_id),
           b AS (SELECT question_id, avg(reward) AS reward FROM latest
                 WHERE run_id = $4 AND step = coalesce($5, (SELECT max(step) FROM explanations WHERE run_id = $4))
                 GROUP BY question_id),
           counts AS (SELECT question_id, count(*) AS n, avg(reward) AS any_reward FROM latest GROUP BY question_id),
           filtered AS (
               SELECT q.id, q.ordinal, q.source_key, q.category, q.question, coalesce(c.n, 0) AS explanation_count,
                      a.reward AS reward_a, b.reward AS reward_b
               FROM questions q
               LEFT JOIN counts c ON c.question_id = q.id
               LEFT JOIN a ON a.question_id = q.id
               LEFT JOIN b ON b.question_id = q.id
               WHERE q.dataset_id = $1
                 AND ($6::text IS NULL OR q.question ILIKE $6 OR q.source_key ILIKE $6)
                 AND ($7::bool IS NULL OR (coalesce(c.n, 0) > 0) = $7)
                 AND ($8::float8 IS NULL OR coalesce(a.reward, c.any_reward) >= $8)
                 AND ($9::float8 IS NULL OR coalesce(a.reward, c.any_reward) <= $9))
           SELECT id AS "id!", ordinal AS "ordinal!", source_key, category, question AS "question!",
                  explanation_count AS "explanation_count!", reward_a, reward_b, count(*) OVER () AS "total!"
           FROM filtered
           ORDER BY
               CASE WHEN $10 = 'diff' THEN reward_b - reward_a END DESC NULLS LAST,
               CASE WHEN $10 = '-diff' THEN reward_b - reward_a END ASC NULLS LAST,
               CASE WHEN $10 = 'reward_a' THEN reward_a END DESC NULLS LAST,
               CASE WHEN $10 = 'reward_b' THEN reward_b END DESC NULLS LAST,
               ordinal
           LIMIT $11 OFFSET $12"#,
        dataset_id,
        run_a,
        step_a,
        run_b,
        step_b,
        pattern,
        has,
        b.min_reward,
        b.max_reward,
        sort,
        i64::from(PAGE_SIZE),
        i64::from((page - 1) * PAGE_SIZE),
    )
    .fetch_all(db)
    .await?;
    let total = rows.first().map_or(0, |r| r.total);
    let rows = rows
        .into_iter()
        .map(|r| QuestionRow {
            id: r.id,
            ordinal: r.ordinal,
            source_key: r.source_key,
            category: r.category,
            question: r.question,
            explanation_count: r.explanation_count,
            reward_a: r.reward_a,
            reward_b: r.reward_b,
        })
        .collect();
    let runs = sqlx::query_scalar!(
        "SELECT r.id FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE e.dataset_id = $1 ORDER BY r.id DESC",
        dataset_id
    )
    .fetch_all(db)
    .await?;
    let mut run_list = Vec::new();
    for id in runs {
        run_list.push(runs::get(db, id).await?);
    }
    Ok(QuestionBrowseView { dataset, rows, total, page, page_size: PAGE_SIZE, runs: run_list })
}

/// A column key: `ref:<id>` or `run:<run>@<step>` with an optional `#<sample>`.
enum Source {
    Reference(i64),
    Run { run: i64, step: i32, sample: Option<i32> },
}

fn parse_source(key: &str) -> Result<Source> {
    let bad =
        || Error::bad_request("cols", format!("`{key}` is not a column (use ref:<id> or run:<id>@<step>[#sample])"));
    if let Some(id) = key.strip_prefix("ref:") {
        return id.parse().map(Source::Reference).map_err(|_| bad());
    }
    let rest = key.strip_prefix("run:").ok_or_else(bad)?;
    let (rest, sample) = match rest.split_once('#') {
        Some((r, s)) => (r, Some(s.parse().map_err(|_| bad())?)),
        None => (rest, None),
    };
    let (run, step) = rest.split_once('@').ok_or_else(bad)?;
    Ok(Source::Run { run: run.parse().map_err(|_| bad())?, step: step.parse().map_err(|_| bad())?, sample })
}

pub async fn question(db: &PgPool, id: i64, cols: &[String]) -> Result<QuestionView> {
    let question = questions::get(db, id).await?;
    let all = explanations::list(
        db,
        &rlt_types::ExplanationFilter {
            question_id: Some(id),
            limit: Some(explanations::MAX_LIMIT),
            ..Default::default()
        },
    )
    .await?
    .items;
    // Sources: each reference, and each run at each step it has samples at.
    let mut sources: Vec<SourceOption> = all
        .iter()
        .filter(|e| e.origin == "reference")
        .map(|e| SourceOption {
            key: format!("ref:{}", e.id),
            label: match &e.author {
                Some(a) => format!("{} ({a})", e.label.clone().unwrap_or_default()),
                None => e.label.clone().unwrap_or_default(),
            },
        })
        .collect();
    let mut run_steps: Vec<(i64, i32)> = all
        .iter()
        .filter_map(|e| Some((e.run_id?, e.step?)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    run_steps.sort();
    for &(run, step) in &run_steps {
        sources.push(SourceOption { key: format!("run:{run}@{step}"), label: format!("run {run} · step {step}") });
    }
    let chosen: Vec<String> = if cols.is_empty() {
        // A reference (GPT-4 first, as the strongest) next to the newest
        // step of up to two runs.
        let mut refs: Vec<&SourceOption> = sources.iter().filter(|s| s.key.starts_with("ref:")).collect();
        refs.sort_by_key(|s| !s.label.contains("GPT-4"));
        let mut latest: Vec<(i64, i32)> = Vec::new();
        for &(run, step) in run_steps.iter().rev() {
            if !latest.iter().any(|(r, _)| *r == run) {
                latest.push((run, step));
            }
        }
        let mut keys: Vec<String> =
            refs.iter().take(if latest.is_empty() { 2 } else { 1 }).map(|s| s.key.clone()).collect();
        keys.extend(latest.iter().take(2).map(|(r, s)| format!("run:{r}@{s}")));
        keys
    } else {
        cols.iter().take(MAX_COLUMNS).cloned().collect()
    };
    let mut columns = Vec::new();
    for key in chosen {
        columns.push(column(db, &all, &key, &run_steps).await?);
    }
    for c in &mut columns {
        if let Some(r) = &mut c.reward {
            round_token_values(&mut r.score);
        }
        // A scored explanation is shown token by token; its text would only
        // double the page. The other samples are links: no text needed.
        if let (Some(e), Some(_)) = (&mut c.explanation, &c.reward) {
            e.completion.clear();
        }
        for sample in &mut c.samples {
            sample.completion.clear();
        }
    }
    Ok(QuestionView { question, sources, columns })
}

/// Per-token values to 4 decimals: the page shows 3, and full f64 digits
/// would make a page of 8 long explanations several times larger.
fn round_token_values(score: &mut rlt_types::ScoreResult) {
    for values in [
        &mut score.solution_logprobs,
        &mut score.thought_teacher_logprobs,
        &mut score.thought_student_logprobs,
        &mut score.thought_kl,
    ] {
        for v in values.iter_mut() {
            if v.is_finite() {
                *v = (*v * 1e4).round() / 1e4;
            }
        }
    }
}

async fn column(db: &PgPool, all: &[ExplanationSummary], key: &str, run_steps: &[(i64, i32)]) -> Result<Column> {
    let latest_reward = |id: i64| async move { Ok::<_, Error>(explanations::rewards_of(db, &[id]).await?.pop()) };
    match parse_source(key)? {
        Source::Reference(id) => {
            let explanation = all.iter().find(|e| e.id == id && e.origin == "reference").cloned();
            let title = explanation
                .as_ref()
                .map(|e| e.label.clone().unwrap_or_default())
                .unwrap_or_else(|| format!("reference {id} (not of this question)"));
            let reward = match &explanation {
                Some(e) => latest_reward(e.id).await?,
                None => None,
            };
            Ok(Column {
                key: key.to_owned(),
                title,
                explanation,
                reward,
                run_id: None,
                steps: vec![],
                step: None,
                samples: vec![],
            })
        }
        Source::Run { run, step, sample } => {
            let samples: Vec<ExplanationSummary> =
                all.iter().filter(|e| e.run_id == Some(run) && e.step == Some(step)).cloned().collect();
            // The chosen sample, else the best-scored one, else the first.
            let explanation = match sample {
                Some(s) => samples.iter().find(|e| e.sample_index == Some(s)).cloned(),
                None => samples
                    .iter()
                    .max_by(|a, b| {
                        a.reward.unwrap_or(f64::NEG_INFINITY).total_cmp(&b.reward.unwrap_or(f64::NEG_INFINITY))
                    })
                    .cloned(),
            };
            let reward = match &explanation {
                Some(e) => latest_reward(e.id).await?,
                None => None,
            };
            let experiment = runs::get(db, run).await.map(|r| r.experiment_name).unwrap_or_default();
            Ok(Column {
                key: key.to_owned(),
                title: format!("run {run} ({experiment}) · step {step}"),
                explanation,
                reward,
                run_id: Some(run),
                steps: run_steps.iter().filter(|(r, _)| *r == run).map(|(_, s)| *s).collect(),
                step: Some(step),
                samples,
            })
        }
    }
}
