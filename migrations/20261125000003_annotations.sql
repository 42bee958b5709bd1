-- Reviewer annotations of explanations. The review workflow (rubrics, blind
-- pairwise choices, agreement) builds on this table; the API already filters
-- explanations by whether they have annotations.
CREATE TABLE annotations (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    explanation_id bigint NOT NULL REFERENCES explanations(id) ON DELETE CASCADE,
    reviewer       text NOT NULL,
    rubric         jsonb NOT NULL DEFAULT '{}'::jsonb,
    comment        text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX annotations_explanation_idx ON annotations (explanation_id);
CREATE INDEX explanations_run_idx ON explanations (run_id, question_id) WHERE run_id IS NOT NULL;
