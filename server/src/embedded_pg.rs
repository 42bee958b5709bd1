//! A private Postgres cluster in the data directory, for single-machine use
//! when no `DATABASE_URL` is given.
//!
//! It runs the system's own Postgres binaries (`initdb`, `pg_ctl`), listens on
//! a unix socket only (no TCP port to collide with or expose), and trusts local
//! connections because the socket directory is private to the owning user.
//! Postgres refuses to run as root, so under root the cluster is owned by and
//! run as the `postgres` system user that Debian's package creates.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use tokio::process::Command;

/// Superuser created by `initdb` and used by the app.
const DB_USER: &str = "rlt";
/// Database the app stores its state in.
pub const DB_NAME: &str = "rlt";
/// Only names the socket file; there is no TCP listener.
const PORT: u16 = 5432;
/// `sun_path` holds 108 bytes; longer socket paths fall back to /tmp.
const MAX_SOCKET_PATH: usize = 100;

#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Trade durability for speed (fsync off). Only for throwaway test clusters.
    pub unsafe_fast: bool,
}

#[derive(Debug)]
pub struct EmbeddedPostgres {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<nix::unistd::User>,
}

impl EmbeddedPostgres {
    /// Describes the cluster under `<data_dir>/pg` without touching it.
    pub fn new(data_dir: &Path) -> anyhow::Result<Self> {
        let data_dir = absolute(data_dir)?;
        let run_as = postgres_user_if_root()?;
        let mut root = data_dir.join("pg");
        if let Some(user) = &run_as
            && let Some(blocked) = first_unreachable_ancestor(user, &root)
        {
            // Under root the cluster runs as `postgres`, which cannot enter
            // e.g. /root. A private directory under /var/tmp keeps the data
            // across restarts instead of failing.
            let fallback = PathBuf::from("/var/tmp").join(format!("rlt-pg-{}", short_hash(&root)));
            tracing::warn!(
                blocked = %blocked.display(),
                cluster = %fallback.display(),
                "user '{}' cannot reach the data directory; keeping the embedded Postgres cluster elsewhere",
                user.name
            );
            root = fallback;
        }
        let mut socket_dir = root.join("run");
        if socket_dir.join(format!(".s.PGSQL.{PORT}")).as_os_str().len() > MAX_SOCKET_PATH {
            socket_dir = std::env::temp_dir().join(format!("rlt-pg-{}", short_hash(&root)));
        }
        Ok(Self { pgdata: root.join("data"), socket_dir, bin_dir: find_bin_dir()?, run_as })
    }

    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new().socket(&self.socket_dir).port(PORT).username(DB_USER).database(DB_NAME)
    }

    /// A libpq-style URL for other tools (psql, sqlx-cli, a second `rlt`).
    pub fn url(&self) -> String {
        format!("postgres://{DB_USER}@localhost:{PORT}/{DB_NAME}?host={}", self.socket_dir.display())
    }

    /// Creates the cluster if it does not exist and starts it if it is not
    /// running. Returns whether this call started it (and so should stop it).
    pub async fn ensure_running(&self, options: &ClusterOptions) -> anyhow::Result<bool> {
        if !self.pgdata.join("PG_VERSION").exists() {
            self.init().await?;
        }
        if self.is_running().await? {
            return Ok(false);
        }
        self.write_settings(options)?;
        self.prepare_dirs()?;
        let log = self.pgdata.parent().expect("pgdata has a parent").join("postgres.log");
        let status = self
            .pg_command("pg_ctl")
            .arg("start")
            .arg("--wait")
            .args(["--timeout", "60", "--silent", "-D"])
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .status()
            .await
            .context("running pg_ctl start")?;
        if !status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "Postgres failed to start (see {}):\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.create_database().await?;
        tracing::info!(pgdata = %self.pgdata.display(), "embedded Postgres started");
        Ok(true)
    }

    pub async fn is_running(&self) -> anyhow::Result<bool> {
        if !self.pgdata.join("postmaster.pid").exists() {
            return Ok(false);
        }
        let status = self
            .pg_command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.pgdata)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("running pg_ctl status")?;
        Ok(status.success())
    }

    /// Fast shutdown: open transactions roll back, committed data is kept.
    pub async fn stop(&self) -> anyhow::Result<()> {
        if !self.is_running().await? {
            return Ok(());
        }
        let status = self
            .pg_command("pg_ctl")
            .args(["stop", "--wait", "--silent", "-m", "fast", "-D"])
            .arg(&self.pgdata)
            .status()
            .await
            .context("running pg_ctl stop")?;
        if !status.success() {
            bail!("pg_ctl stop failed for {}", self.pgdata.display());
        }
        tracing::info!("embedded Postgres stopped");
        Ok(())
    }

    async fn init(&self) -> anyhow::Result<()> {
        let root = self.pgdata.parent().expect("pgdata has a parent");
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        self.chown(root)?;
        tracing::info!(pgdata = %self.pgdata.display(), "creating embedded Postgres cluster");
        let output = self
            .pg_command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-U", DB_USER, "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"])
            .output()
            .await
            .context("running initdb")?;
        if !output.status.success() {
            bail!("initdb failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        // Settings live in a file rewritten at every start, so they follow the
        // data directory if it moves and need no shell quoting of paths.
        let conf = self.pgdata.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str("\ninclude_if_exists = 'rlt.conf'\n");
        std::fs::write(&conf, text)?;
        Ok(())
    }

    fn write_settings(&self, options: &ClusterOptions) -> anyhow::Result<()> {
        let mut conf = format!(
            "listen_addresses = ''\nport = {PORT}\nunix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\nmax_connections = 200\n",
            self.socket_dir.display().to_string().replace('\'', "''")
        );
        if options.unsafe_fast {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let path = self.pgdata.join("rlt.conf");
        std::fs::write(&path, conf)?;
        self.chown(&path)
    }

    fn prepare_dirs(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.socket_dir)?;
        std::fs::set_permissions(&self.socket_dir, std::fs::Permissions::from_mode(0o700))?;
        self.chown(&self.socket_dir)?;
        let log = self.pgdata.parent().expect("pgdata has a parent").join("postgres.log");
        if !log.exists() {
            std::fs::write(&log, "")?;
        }
        self.chown(&log)
    }

    async fn create_database(&self) -> anyhow::Result<()> {
        use sqlx::{Connection, Row};
        let admin = self.connect_options().database("postgres");
        let mut conn = sqlx::PgConnection::connect_with(&admin).await.context("connecting to the embedded Postgres")?;
        let exists = sqlx::query("SELECT 1 AS one FROM pg_database WHERE datname = $1")
            .bind(DB_NAME)
            .fetch_optional(&mut conn)
            .await?
            .map(|row| row.get::<i32, _>("one"))
            .is_some();
        if !exists {
            sqlx::query(&format!("CREATE DATABASE {DB_NAME}")).execute(&mut conn).await?;
        }
        Ok(())
    }

    fn pg_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.kill_on_drop(false);
        // pg_ctl leaves the postmaster running after we exit; it must not share
        // our process group, or a Ctrl-C in the terminal would kill it
        // uncleanly before our own shutdown code stops it.
        cmd.process_group(0);
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            cmd.env("HOME", &user.dir).env("USER", &user.name);
            // The child cannot read our working directory if it is private.
            cmd.current_dir("/");
        }
        cmd
    }

    fn chown(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(user) = &self.run_as {
            nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                .with_context(|| format!("chown {} to {}", path.display(), user.name))?;
        }
        Ok(())
    }
}

fn postgres_user_if_root() -> anyhow::Result<Option<nix::unistd::User>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres")? {
        Some(user) => Ok(Some(user)),
        None => bail!(
            "running as root, but there is no 'postgres' user to run the embedded Postgres as; \
             install the postgresql package (make run does) or run as a normal user"
        ),
    }
}

/// The first directory above `dir` that `user` cannot pass through, if any.
fn first_unreachable_ancestor(user: &nix::unistd::User, dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().skip(1).find_map(|ancestor| {
        // A directory that does not exist yet will be created by us, and
        // chowned where it matters.
        let meta = std::fs::metadata(ancestor).ok()?;
        let mode = meta.mode();
        let ok = mode & 0o001 != 0
            || (meta.uid() == user.uid.as_raw() && mode & 0o100 != 0)
            || (meta.gid() == user.gid.as_raw() && mode & 0o010 != 0);
        (!ok).then(|| ancestor.to_owned())
    })
}

/// `RLT_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `PATH`.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RLT_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists()).context(
        "no Postgres binaries found (looked in RLT_PG_BIN, /usr/lib/postgresql/*/bin and \
             PATH); install the postgresql package or set DATABASE_URL",
    )
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    path.canonicalize().with_context(|| format!("resolving {}", path.display()))
}

fn short_hash(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}
