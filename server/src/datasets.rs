//! Reading datasets: the queries behind the REST API and the UI alike.

use rlt_types::{DatasetSource, DatasetSummary};
use sqlx::PgPool;

use crate::error::{Error, Result};

struct Row {
    id: i64,
    name: String,
    source: String,
    description: String,
    created_at: chrono::DateTime<chrono::Utc>,
    question_count: Option<i64>,
    reference_count: Option<i64>,
}

impl From<Row> for DatasetSummary {
    fn from(r: Row) -> Self {
        DatasetSummary {
            id: r.id,
            name: r.name,
            // The column's CHECK constraint admits only known sources.
            source: DatasetSource::parse(&r.source).unwrap_or(DatasetSource::Jsonl),
            description: r.description,
            question_count: r.question_count.unwrap_or(0),
            reference_count: r.reference_count.unwrap_or(0),
            created_at: r.created_at.to_rfc3339(),
        }
    }
}

pub async fn list(pool: &PgPool) -> Result<Vec<DatasetSummary>> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT d.id, d.name, d.source, d.description, d.created_at,
                  (SELECT count(*) FROM questions q WHERE q.dataset_id = d.id) AS question_count,
                  (SELECT count(*) FROM explanations e JOIN questions q ON q.id = e.question_id
                    WHERE q.dataset_id = d.id AND e.origin = 'reference') AS reference_count
           FROM datasets d ORDER BY d.id"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub async fn get(pool: &PgPool, id: i64) -> Result<DatasetSummary> {
    sqlx::query_as!(
        Row,
        r#"SELECT d.id, d.name, d.source, d.description, d.created_at,
                  (SELECT count(*) FROM questions q WHERE q.dataset_id = d.id) AS question_count,
                  (SELECT count(*) FROM explanations e JOIN questions q ON q.id = e.question_id
                    WHERE q.dataset_id = d.id AND e.origin = 'reference') AS reference_count
           FROM datasets d WHERE d.id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?
    .map(Into::into)
    .ok_or_else(|| Error::NotFound(format!("dataset {id}")))
}

pub async fn exists_by_name(pool: &PgPool, name: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!("SELECT id FROM datasets WHERE name = $1", name).fetch_optional(pool).await?.is_some())
}

pub async fn exists(pool: &PgPool, id: i64) -> Result<bool> {
    Ok(sqlx::query_scalar!("SELECT id FROM datasets WHERE id = $1", id).fetch_optional(pool).await?.is_some())
}
