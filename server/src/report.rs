//! The self-contained run report (`GET /runs/{id}/report`, `rlt report`):
//! one HTML file with the config, every metric curve, the reward
//! distribution and the best and worst explanations, for attaching to a
//! review or an email. Charts are inline SVG and styles are inline, so the
//! file needs nothing else to open.

use askama::Template;
use frontend::components::chart::{Series, by_name, histogram_svg, line_chart_svg};
use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::{experiments, runs};

/// Explanations shown at each end of the reward ranking.
const EXTREMES: i64 = 5;

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage {
    title: String,
    run: rlt_types::Run,
    generated_at: String,
    config_json: String,
    charts: Vec<String>,
    histogram: Option<String>,
    stats: Vec<(&'static str, String)>,
    best: Vec<Item>,
    worst: Vec<Item>,
}

struct Item {
    explanation_id: i64,
    question: String,
    question_title: String,
    question_id: i64,
    step: i32,
    sample_index: i32,
    reward: String,
    parts: Vec<(&'static str, String)>,
    completion: String,
}

/// Renders the report of run `run_id`. Model text reaches the page only
/// through askama's HTML escaping.
pub async fn render(db: &PgPool, run_id: i64) -> Result<String> {
    let run = runs::get(db, run_id).await?;
    let config = experiments::versions(db, run.experiment_id)
        .await?
        .into_iter()
        .find(|v| v.id == run.config_id)
        .ok_or_else(|| Error::NotFound(format!("config of run {run_id}")))?;
    let config_json = serde_json::to_string_pretty(&config.config).unwrap_or_default();

    let charts = by_name(&runs::metrics(db, run_id, None).await?)
        .into_iter()
        .map(|(name, points)| line_chart_svg(&name, &[Series { label: name.clone(), points }], &[], 460, 260))
        .collect();

    let rewards = latest_rewards(db, run_id).await?;
    let histogram = (!rewards.is_empty()).then(|| histogram_svg("reward of each explanation", &rewards, 20, 620, 260));
    let stats = reward_stats(&rewards);
    let best = extremes(db, run_id, true).await?;
    let worst = extremes(db, run_id, false).await?;

    let page = ReportPage {
        title: format!("Run {} · {} · RLT Studio report", run.id, run.experiment_name),
        generated_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        run,
        config_json,
        charts,
        histogram,
        stats,
        best,
        worst,
    };
    page.render().map_err(|e| Error::Internal(anyhow::anyhow!("rendering the report: {e}")))
}

async fn latest_rewards(db: &PgPool, run_id: i64) -> Result<Vec<f64>> {
    let rows = sqlx::query_scalar!(
        r#"SELECT r.reward AS "reward!" FROM explanations e
           JOIN LATERAL (SELECT reward FROM rewards WHERE explanation_id = e.id ORDER BY id DESC LIMIT 1) r ON true
           WHERE e.run_id = $1"#,
        run_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows)
}

fn reward_stats(rewards: &[f64]) -> Vec<(&'static str, String)> {
    let finite: Vec<f64> = rewards.iter().copied().filter(|r| r.is_finite()).collect();
    if finite.is_empty() {
        return Vec::new();
    }
    let n = finite.len() as f64;
    let mean = finite.iter().sum::<f64>() / n;
    let std = (finite.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    vec![
        ("scored explanations", finite.len().to_string()),
        ("mean", format!("{mean:.4}")),
        ("std", format!("{std:.4}")),
        ("min", format!("{min:.4}")),
        ("max", format!("{max:.4}")),
    ]
}

/// The run's explanations with the highest (`best`) or lowest latest reward.
async fn extremes(db: &PgPool, run_id: i64, best: bool) -> Result<Vec<Item>> {
    let rows = sqlx::query!(
        r#"SELECT e.id, e.question_id, e.step AS "step!", e.sample_index AS "sample_index!", e.completion, COALESCE(q.source_key, 'question ' || q.id) AS "title!", q.question,
                  r.reward AS "reward!", r.solution_logprob_mean AS "solution_logprob_mean!",
                  r.solution_logprob_min AS "solution_logprob_min!", r.thought_kl_mean AS "thought_kl_mean!",
                  r.thought_kl_max AS "thought_kl_max!", r.match_penalty AS "match_penalty!"
           FROM explanations e
           JOIN questions q ON q.id = e.question_id
           JOIN LATERAL (SELECT * FROM rewards WHERE explanation_id = e.id ORDER BY id DESC LIMIT 1) r ON true
           WHERE e.run_id = $1
           ORDER BY CASE WHEN $2 THEN -r.reward ELSE r.reward END, e.id
           LIMIT $3"#,
        run_id,
        best,
        EXTREMES
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Item {
            explanation_id: r.id,
            question_title: r.title,
            question_id: r.question_id,
            question: r.question,
            step: r.step,
            sample_index: r.sample_index,
            reward: format!("{:.4}", r.reward),
            parts: vec![
                ("solution log-prob mean", format!("{:.4}", r.solution_logprob_mean)),
                ("solution log-prob min", format!("{:.4}", r.solution_logprob_min)),
                ("thought KL mean", format!("{:.4}", r.thought_kl_mean)),
                ("thought KL max", format!("{:.4}", r.thought_kl_max)),
                ("match penalty", format!("{:.1}", r.match_penalty)),
            ],
            completion: r.completion,
        })
        .collect())
}
