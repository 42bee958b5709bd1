//! Importing datasets: CHAMP, RLT/Bespoke-Stratos JSONL and seeded synthetic
//! arithmetic. Parsers turn input into a [`NewDataset`] without touching the
//! database; [`store`] writes it in one transaction, so a bad line anywhere
//! leaves the database unchanged.

pub mod champ;
pub mod jsonl;
pub mod synthetic;

use std::path::{Path, PathBuf};

use rlt_types::{ChampImport, DatasetSource, DatasetSummary, ImportDatasetRequest, JsonlImport, SyntheticImport};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::datasets;
use crate::error::{Error, Result, ResultExt};

/// A dataset parsed and validated, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewDataset {
    pub name: String,
    pub source: DatasetSource,
    pub description: String,
    pub params: Value,
    pub questions: Vec<NewQuestion>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewQuestion {
    pub source_key: Option<String>,
    pub question: String,
    pub solution: String,
    pub answer: Option<String>,
    pub category: Option<String>,
    pub meta: Value,
    pub references: Vec<NewReference>,
}

/// An explanation that came with the data, e.g. one of CHAMP's annotated
/// GPT-4 solutions or a Bespoke-Stratos reasoning trace.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReference {
    pub author: Option<String>,
    pub label: String,
    pub text: String,
    pub meta: Value,
}

/// An input problem located at a line and field, reported to CLI and API
/// users alike.
#[derive(Debug, Clone, PartialEq)]
pub struct InputError {
    pub line: Option<u64>,
    pub field: Option<String>,
    pub message: String,
}

impl InputError {
    pub fn at_line(line: u64, field: Option<&str>, message: impl Into<String>) -> Self {
        Self { line: Some(line), field: field.map(str::to_owned), message: message.into() }
    }

    pub fn whole_file(message: impl Into<String>) -> Self {
        Self { line: None, field: None, message: message.into() }
    }
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, &self.field) {
            (Some(line), Some(field)) => write!(f, "line {line}, field `{field}`: {}", self.message),
            (Some(line), None) => write!(f, "line {line}: {}", self.message),
            (None, Some(field)) => write!(f, "field `{field}`: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Self {
        Error::InvalidInput(vec![e])
    }
}

pub fn validate_name(name: &str) -> Result<()> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.len() > 200 || trimmed != name {
        return Err(Error::invalid(
            Some("name".to_owned()),
            "dataset name must be 1 to 200 characters without leading or trailing spaces",
        ));
    }
    Ok(())
}

/// Default name of the CHAMP dataset.
pub const CHAMP_NAME: &str = "champ";

/// Parses and stores one import request; the CLI and the REST API both end
/// up here. CPU-heavy parsing runs off the async runtime.
pub async fn run(pool: &PgPool, data_dir: &Path, request: ImportDatasetRequest) -> Result<DatasetSummary> {
    let dataset = match request {
        ImportDatasetRequest::Champ(ChampImport { name }) => {
            let path = data_dir.join(champ::DEFAULT_PATH);
            from_champ_file(&path, name.unwrap_or_else(|| CHAMP_NAME.to_owned())).await?
        }
        ImportDatasetRequest::Jsonl(JsonlImport { name, content, description }) => {
            from_jsonl(content.into_bytes(), name, description.unwrap_or_default(), json!({})).await?
        }
        ImportDatasetRequest::Synthetic(SyntheticImport { name, seed, count }) => {
            let seed = seed.unwrap_or(0);
            let count = count.unwrap_or(synthetic::DEFAULT_COUNT as u64);
            if count == 0 || count > synthetic::MAX_COUNT as u64 {
                return Err(Error::invalid(
                    Some("count".to_owned()),
                    format!("count must be between 1 and {}", synthetic::MAX_COUNT),
                ));
            }
            from_synthetic(name, seed, count as usize)
        }
    };
    store(pool, dataset).await
}

pub async fn from_champ_file(path: &Path, name: String) -> Result<NewDataset> {
    validate_name(&name)?;
    let path: PathBuf = path.to_owned();
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        Error::invalid(None, format!("cannot read the CHAMP file {} ({e}); `make run` fetches it", path.display()))
    })?;
    let sha256 = sha256_hex(&bytes);
    let questions =
        tokio::task::spawn_blocking(move || champ::parse(&bytes)).await.map_err(|e| Error::Internal(e.into()))??;
    Ok(NewDataset {
        name,
        source: DatasetSource::Champ,
        description: "CHAMP: competition math problems with step-by-step solutions and annotated model solutions (Mao et al., 2024; MIT)".to_owned(),
        params: json!({ "file": path.file_name().map(|f| f.to_string_lossy()), "sha256": sha256 }),
        questions,
    })
}

pub async fn from_jsonl(content: Vec<u8>, name: String, description: String, mut params: Value) -> Result<NewDataset> {
    validate_name(&name)?;
    params["sha256"] = json!(sha256_hex(&content));
    let questions = tokio::task::spawn_blocking(move || jsonl::parse(&content))
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map_err(Error::InvalidInput)?;
    Ok(NewDataset { name, source: DatasetSource::Jsonl, description, params, questions })
}

pub fn from_synthetic(name: String, seed: u64, count: usize) -> NewDataset {
    NewDataset {
        name,
        source: DatasetSource::Synthetic,
        description: format!("{count} synthetic multi-step arithmetic problems (seed {seed})"),
        params: json!({ "seed": seed, "count": count }),
        questions: synthetic::generate(seed, count),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Writes a dataset with its questions and reference explanations in one
/// transaction.
pub async fn store(pool: &PgPool, dataset: NewDataset) -> Result<DatasetSummary> {
    validate_name(&dataset.name)?;
    if dataset.questions.is_empty() {
        return Err(InputError::whole_file("the dataset has no questions").into());
    }
    let mut tx = pool.begin().await?;
    let name = dataset.name.clone();
    let dataset_id = sqlx::query_scalar!(
        "INSERT INTO datasets (name, source, description, params) VALUES ($1, $2, $3, $4) RETURNING id",
        dataset.name,
        dataset.source.as_str(),
        dataset.description,
        dataset.params,
    )
    .fetch_one(&mut *tx)
    .await
    .on_constraint("datasets_name_key", || {
        Error::conflict("name", format!("a dataset named '{name}' already exists"))
    })?;

    // Column-wise arrays so the whole dataset goes in with one statement.
    let n = dataset.questions.len();
    let mut ordinals = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    let mut solutions = Vec::with_capacity(n);
    let mut answers = Vec::with_capacity(n);
    let mut categories = Vec::with_capacity(n);
    let mut metas = Vec::with_capacity(n);
    for (i, q) in dataset.questions.iter().enumerate() {
        ordinals.push(i as i32);
        keys.push(q.source_key.clone());
        texts.push(q.question.clone());
        solutions.push(q.solution.clone());
        answers.push(q.answer.clone());
        categories.push(q.category.clone());
        metas.push(q.meta.clone());
    }
    let rows = sqlx::query!(
        r#"INSERT INTO questions (dataset_id, ordinal, source_key, question, solution, answer, category, meta)
           SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[])
           RETURNING id, ordinal"#,
        dataset_id,
        &ordinals,
        &keys as &[Option<String>],
        &texts,
        &solutions,
        &answers as &[Option<String>],
        &categories as &[Option<String>],
        &metas,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut question_ids = vec![0i64; n];
    for row in rows {
        question_ids[row.ordinal as usize] = row.id;
    }

    let mut ref_questions = Vec::new();
    let mut ref_authors = Vec::new();
    let mut ref_labels = Vec::new();
    let mut ref_texts = Vec::new();
    let mut ref_metas = Vec::new();
    for (q, &qid) in dataset.questions.iter().zip(&question_ids) {
        for r in &q.references {
            ref_questions.push(qid);
            ref_authors.push(r.author.clone());
            ref_labels.push(r.label.clone());
            ref_texts.push(r.text.clone());
            ref_metas.push(r.meta.clone());
        }
    }
    if !ref_questions.is_empty() {
        sqlx::query!(
            r#"INSERT INTO explanations (question_id, origin, author, label, completion, meta)
               SELECT q, 'reference', a, l, t, m
               FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) AS u(q, a, l, t, m)"#,
            &ref_questions,
            &ref_authors as &[Option<String>],
            &ref_labels,
            &ref_texts,
            &ref_metas,
        )
        .execute(&mut *tx)
        .await
        .on_constraint("explanations_reference_key", || {
            Error::invalid(None, "two reference explanations of one question share a label")
        })?;
    }
    tx.commit().await?;
    datasets::get(pool, dataset_id).await
}

/// Reads a string field, treating JSON null like an absent field.
fn string_field(obj: &serde_json::Map<String, Value>, line: u64, name: &str) -> Result<Option<String>, InputError> {
    match obj.get(name) {
        Some(Value::Number(_)) => Err(InputError::at_line(line, Some(name), "must be a string, found a number")),
        _ => scalar_field(obj, line, name),
    }
}

/// Like [`string_field`], but numbers are taken as text: answers and ids are
/// often written as `42`.
fn scalar_field(obj: &serde_json::Map<String, Value>, line: u64, name: &str) -> Result<Option<String>, InputError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => {
            Err(InputError::at_line(line, Some(name), format!("must be a string, found {}", json_type(other))))
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
