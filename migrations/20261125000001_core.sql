-- Core schema of RLT Studio. It follows the data flow in DESIGN.md:
-- datasets/questions -> experiments (versioned configs) -> runs -> jobs ->
-- explanations -> rewards, with metrics, checkpoints and benchmark results
-- hanging off runs. Ids are bigint identities: short, ordered, URL-friendly.

CREATE TABLE datasets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    -- Where the questions came from: 'champ', 'jsonl' or 'synthetic'.
    source      text NOT NULL CHECK (source IN ('champ', 'jsonl', 'synthetic')),
    description text NOT NULL DEFAULT '',
    -- How it was produced (file name and sha256, generator seed, ...), so an
    -- import can be traced and repeated.
    params      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE questions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dataset_id  bigint NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    -- Position in the imported file, so a dataset reads in its original order.
    ordinal     integer NOT NULL CHECK (ordinal >= 0),
    -- Identifier from the source, e.g. CHAMP's 'P_Combinatorics_1' or a JSONL 'id'.
    source_key  text,
    question    text NOT NULL,
    solution    text NOT NULL,
    answer      text,
    category    text,
    meta        jsonb NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (dataset_id, ordinal)
);
CREATE INDEX questions_dataset_idx ON questions (dataset_id, ordinal);

-- Every model a run or reward refers to, by content hash, so a result always
-- names exactly which weights produced it.
CREATE TABLE models (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL,
    format       text NOT NULL CHECK (format IN ('gguf', 'hf')),
    path         text NOT NULL,
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    architecture text NOT NULL,
    meta         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, sha256)
);

CREATE TABLE experiments (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    description      text NOT NULL DEFAULT '',
    teacher_model_id bigint NOT NULL REFERENCES models(id),
    student_model_id bigint NOT NULL REFERENCES models(id),
    dataset_id       bigint NOT NULL REFERENCES datasets(id),
    -- Optional subset of the dataset; NULL means every question.
    question_ids     bigint[],
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Configs are append-only: an edit inserts the next version, so every run can
-- point at the exact config it used. The trigger below enforces it.
CREATE TABLE experiment_configs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id bigint NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    version       integer NOT NULL CHECK (version >= 1),
    config        jsonb NOT NULL,
    config_hash   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, version)
);

CREATE FUNCTION forbid_config_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'experiment configs are immutable; create a new version'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'experiment_configs_immutable';
END $$;
CREATE TRIGGER experiment_configs_immutable
    BEFORE UPDATE ON experiment_configs
    FOR EACH ROW EXECUTE FUNCTION forbid_config_update();

CREATE TABLE runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id    bigint NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    config_id        bigint NOT NULL REFERENCES experiment_configs(id),
    name             text NOT NULL DEFAULT '',
    status           text NOT NULL DEFAULT 'created'
                     CHECK (status IN ('created', 'running', 'succeeded', 'failed', 'cancelled')),
    seed             bigint NOT NULL,
    -- Provenance, copied at creation so it survives later model or config edits.
    config_hash      text NOT NULL,
    teacher_sha256   text NOT NULL,
    student_sha256   text NOT NULL,
    code_version     text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX runs_experiment_idx ON runs (experiment_id, id DESC);

CREATE TABLE jobs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text NOT NULL,
    status         text NOT NULL DEFAULT 'queued'
                   CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    run_id         bigint REFERENCES runs(id) ON DELETE CASCADE,
    params         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Which workers may claim it: 'any', 'cpu' or 'cuda'.
    device         text NOT NULL DEFAULT 'any' CHECK (device IN ('any', 'cpu', 'cuda')),
    priority       integer NOT NULL DEFAULT 0,
    attempts       integer NOT NULL DEFAULT 0,
    max_attempts   integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    run_after      timestamptz NOT NULL DEFAULT now(),
    worker_id      text,
    lease_until    timestamptz,
    heartbeat_at   timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    progress_done  bigint NOT NULL DEFAULT 0,
    progress_total bigint,
    -- The job kind's own durable point (e.g. last finished step), for resuming.
    resume_state   jsonb NOT NULL DEFAULT '{}'::jsonb,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz
);
CREATE INDEX jobs_claim_idx ON jobs (priority DESC, id) WHERE status = 'queued';
CREATE INDEX jobs_run_idx ON jobs (run_id);

CREATE TABLE job_logs (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  bigint NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    ts      timestamptz NOT NULL DEFAULT now(),
    level   text NOT NULL DEFAULT 'info' CHECK (level IN ('debug', 'info', 'warn', 'error')),
    message text NOT NULL
);
CREATE INDEX job_logs_job_idx ON job_logs (job_id, id);

CREATE TABLE checkpoints (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step       integer NOT NULL CHECK (step >= 0),
    -- Key in the artifact object store.
    uri        text NOT NULL,
    sha256     text NOT NULL,
    meta       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, step)
);

-- Teacher explanations of a run, and reference explanations that came with a
-- dataset (e.g. CHAMP's GPT-4 solution), in one table so both can be scored
-- and shown side by side the same way.
CREATE TABLE explanations (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    question_id   bigint NOT NULL REFERENCES questions(id) ON DELETE CASCADE,
    origin        text NOT NULL CHECK (origin IN ('reference', 'teacher')),
    -- Reference explanations: who wrote it ('GPT-4') and the source's own label.
    author        text,
    label         text,
    -- Teacher explanations: the run, the training step of the policy that wrote
    -- it, and which of the N samples for this question it is.
    run_id        bigint REFERENCES runs(id) ON DELETE CASCADE,
    job_id        bigint REFERENCES jobs(id) ON DELETE SET NULL,
    checkpoint_id bigint REFERENCES checkpoints(id) ON DELETE SET NULL,
    step          integer,
    sample_index  integer,
    seed          bigint,
    sampling      jsonb,
    completion    text NOT NULL,
    finish_reason text,
    num_tokens    integer,
    meta          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (origin <> 'teacher' OR (run_id IS NOT NULL AND step IS NOT NULL AND sample_index IS NOT NULL AND seed IS NOT NULL)),
    CHECK (origin <> 'reference' OR (run_id IS NULL AND label IS NOT NULL))
);
-- Idempotent writes: a retried generate job cannot duplicate a sample.
CREATE UNIQUE INDEX explanations_teacher_key
    ON explanations (run_id, question_id, step, sample_index) WHERE origin = 'teacher';
CREATE UNIQUE INDEX explanations_reference_key
    ON explanations (question_id, label) WHERE origin = 'reference';
CREATE INDEX explanations_question_idx ON explanations (question_id);

CREATE TABLE rewards (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    explanation_id        bigint NOT NULL REFERENCES explanations(id) ON DELETE CASCADE,
    teacher_model_id      bigint NOT NULL REFERENCES models(id),
    student_model_id      bigint NOT NULL REFERENCES models(id),
    reward_config         jsonb NOT NULL,
    reward_config_hash    text NOT NULL,
    job_id                bigint REFERENCES jobs(id) ON DELETE SET NULL,
    reward                double precision NOT NULL,
    solution_logprob_mean double precision NOT NULL,
    solution_logprob_min  double precision NOT NULL,
    thought_kl_mean       double precision NOT NULL,
    thought_kl_max        double precision NOT NULL,
    match_penalty         double precision NOT NULL,
    solution_tokens       integer NOT NULL,
    thought_tokens        integer NOT NULL,
    -- Per-token arrays (token texts, log-probs, KL) as the scorer emits them.
    tokens                jsonb NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    -- Re-scoring with another config or model keeps both; the same one is a no-op.
    UNIQUE (explanation_id, reward_config_hash, teacher_model_id, student_model_id)
);
CREATE INDEX rewards_explanation_idx ON rewards (explanation_id);

CREATE TABLE metrics (
    run_id  bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name    text NOT NULL,
    step    bigint NOT NULL,
    value   double precision NOT NULL,
    ts      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, name, step)
);

CREATE TABLE benchmark_results (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        bigint REFERENCES runs(id) ON DELETE CASCADE,
    checkpoint_id bigint REFERENCES checkpoints(id) ON DELETE CASCADE,
    model_id      bigint REFERENCES models(id),
    benchmark     text NOT NULL,
    metric        text NOT NULL,
    value         double precision NOT NULL,
    num_questions integer NOT NULL CHECK (num_questions >= 0),
    meta          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Small facts about this installation, e.g. that demo data was imported once.
CREATE TABLE app_settings (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
