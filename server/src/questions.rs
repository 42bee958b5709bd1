//! Reading questions of a dataset, with search and cursor pagination.

use rlt_types::{Page, QuestionDetail, QuestionFilter, QuestionSummary, ReferenceExplanation};
use sqlx::PgPool;

use crate::error::{Error, Result};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// Questions in dataset order. The cursor is the last ordinal seen, so pages
/// stay stable while other datasets change.
pub async fn list(pool: &PgPool, dataset_id: i64, filter: &QuestionFilter) -> Result<Page<QuestionSummary>> {
    let limit = match filter.limit {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(Error::bad_request("limit", "limit must be at least 1")),
        Some(n) if n > MAX_LIMIT => {
            return Err(Error::bad_request("limit", format!("limit must be at most {MAX_LIMIT}")));
        }
        Some(n) => n,
    };
    let after: i32 = match filter.cursor.as_deref() {
        None | Some("") => -1,
        Some(c) => c
            .parse()
            .ok()
            .filter(|n: &i32| *n >= 0)
            .ok_or_else(|| Error::bad_request("cursor", "cursor is not one this API returned"))?,
    };
    // Make sure a missing dataset is a 404, not an empty page.
    if !crate::datasets::exists(pool, dataset_id).await? {
        return Err(Error::NotFound(format!("dataset {dataset_id}")));
    }
    let pattern = filter
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(|q| format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let mut items = sqlx::query_as!(
        QuestionSummary,
        r#"SELECT q.id, q.dataset_id, q.ordinal, q.source_key, q.category, q.question, q.answer,
                  (SELECT count(*) FROM explanations e WHERE e.question_id = q.id AND e.origin = 'reference') AS "reference_count!"
           FROM questions q
           WHERE q.dataset_id = $1 AND q.ordinal > $2
             AND ($3::text IS NULL OR q.question ILIKE $3 OR q.source_key ILIKE $3)
           ORDER BY q.ordinal
           LIMIT $4"#,
        dataset_id,
        after,
        pattern,
        i64::from(limit) + 1,
    )
    .fetch_all(pool)
    .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|q| q.ordinal.to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

pub async fn get(pool: &PgPool, id: i64) -> Result<QuestionDetail> {
    let q = sqlx::query!(
        r#"SELECT q.id, q.dataset_id, d.name AS dataset_name, q.ordinal, q.source_key, q.category,
                  q.question, q.solution, q.answer
           FROM questions q JOIN datasets d ON d.id = q.dataset_id WHERE q.id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Error::NotFound(format!("question {id}")))?;
    let references = sqlx::query_as!(
        ReferenceExplanation,
        r#"SELECT id, author, label AS "label!", completion AS text
           FROM explanations WHERE question_id = $1 AND origin = 'reference' ORDER BY label"#,
        id
    )
    .fetch_all(pool)
    .await?;
    Ok(QuestionDetail {
        id: q.id,
        dataset_id: q.dataset_id,
        dataset_name: q.dataset_name,
        ordinal: q.ordinal,
        source_key: q.source_key,
        category: q.category,
        question: q.question,
        solution: q.solution,
        answer: q.answer,
        references,
    })
}
