use serde::{Deserialize, Serialize};

/// Where a dataset's questions came from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetSource {
    Champ,
    Jsonl,
    Synthetic,
}

impl DatasetSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetSource::Champ => "champ",
            DatasetSource::Jsonl => "jsonl",
            DatasetSource::Synthetic => "synthetic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "champ" => Some(DatasetSource::Champ),
            "jsonl" => Some(DatasetSource::Jsonl),
            "synthetic" => Some(DatasetSource::Synthetic),
            _ => None,
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub id: i64,
    pub name: String,
    pub source: DatasetSource,
    pub description: String,
    pub question_count: i64,
    /// Reference explanations that came with the data (e.g. CHAMP's GPT-4 solutions).
    pub reference_count: i64,
    /// RFC 3339 timestamp.
    pub created_at: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestionSummary {
    pub id: i64,
    pub dataset_id: i64,
    pub ordinal: i32,
    pub source_key: Option<String>,
    pub category: Option<String>,
    pub question: String,
    pub answer: Option<String>,
    pub reference_count: i64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceExplanation {
    pub id: i64,
    /// Who wrote it, e.g. `GPT-4`.
    pub author: Option<String>,
    /// The source's own label, e.g. CHAMP's `GPT-4|No C w/o H`.
    pub label: String,
    pub text: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestionDetail {
    pub id: i64,
    pub dataset_id: i64,
    pub dataset_name: String,
    pub ordinal: i32,
    pub source_key: Option<String>,
    pub category: Option<String>,
    pub question: String,
    pub solution: String,
    pub answer: Option<String>,
    pub references: Vec<ReferenceExplanation>,
}

/// Filters of a question list.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuestionFilter {
    /// Case-insensitive substring of the question text or its source key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Body of `POST /api/v1/datasets` (as JSON), tagged by `source`. A JSONL
/// file can also be sent as the raw body with `Content-Type:
/// application/x-ndjson` and `?name=`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum ImportDatasetRequest {
    Champ(ChampImport),
    Jsonl(JsonlImport),
    Synthetic(SyntheticImport),
}

impl ImportDatasetRequest {
    pub const SOURCES: [&'static str; 3] = ["champ", "jsonl", "synthetic"];
}

/// CHAMP from the copy fetched into the server's data directory.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChampImport {
    /// Defaults to `champ`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// RLT / Bespoke-Stratos style JSONL, one JSON object per line.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlImport {
    pub name: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Seeded multi-step arithmetic word problems.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticImport {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}
