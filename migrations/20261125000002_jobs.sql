-- Job queue details: ETA, an index for reclaiming expired leases, and the
-- workers that advertise themselves (host, device, kinds) so people can see
-- who is working on what.

ALTER TABLE jobs ADD COLUMN eta_at timestamptz;
ALTER TABLE jobs ADD COLUMN attempt_started_at timestamptz;
CREATE INDEX jobs_lease_idx ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_status_idx ON jobs (status, id DESC);

CREATE TABLE workers (
    id           text PRIMARY KEY,
    hostname     text NOT NULL,
    device       text NOT NULL CHECK (device IN ('cpu', 'cuda')),
    kinds        text[] NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);
