//! PostgreSQL for the benchmarks: a fresh database on the server `DATABASE_URL` names, and
//! pgbench's figures on it (the server's own ceilings, measured in the same run).

use sqlx::{Connection, PgConnection};

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let host_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{name}{q}", &base[..host_end])
}

pub async fn exec(url: &str, sql: &str) {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut c)
        .await
        .unwrap();
}

fn database_name(tag: &str) -> String {
    format!("allot_bench_{tag}_{}", std::process::id())
}

/// A new, empty database named after `tag` (replacing one of that name); its URL.
pub async fn fresh_database(tag: &str) -> String {
    let (admin, name) = (admin_url(), database_name(tag));
    exec(&admin, &format!("DROP DATABASE IF EXISTS {name}")).await;
    exec(&admin, &format!("CREATE DATABASE {name}")).await;
    with_database(&admin, &name)
}

/// Drops the database [`fresh_database`] made for `tag`, connections and all.
pub async fn drop_database(tag: &str) {
    let name = database_name(tag);
    exec(
        &admin_url(),
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}

/// The pgbench ceilings on `url`, `secs` each: (UPDATE of one hot row, UPDATE of a random row
/// among 100,000), in transactions/s, 64 clients.
pub async fn ceilings(url: &str, secs: u64) -> (f64, f64) {
    exec(
        url,
        "CREATE TABLE hot (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO hot VALUES (1, 0); \
         CREATE TABLE many (id int PRIMARY KEY, n bigint NOT NULL); \
         INSERT INTO many SELECT g, 0 FROM generate_series(1, 100000) g;",
    )
    .await;
    let hot = pgbench(url, "UPDATE hot SET n = n + 1 WHERE id = 1;\n", secs);
    let random = pgbench(
        url,
        "\\set id random(1, 100000)\nUPDATE many SET n = n + 1 WHERE id = :id;\n",
        secs,
    );
    (hot, random)
}

/// Runs one pgbench script with 64 clients; returns its transactions/s.
fn pgbench(url: &str, script: &str, secs: u64) -> f64 {
    let path = std::env::temp_dir().join(format!("allot-pgbench-{}.sql", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let out = std::process::Command::new("pgbench")
        .args(["-n", "-c", "64", "-j", "2", "-T", &secs.to_string(), "-f"])
        .arg(&path)
        .arg(url)
        .output()
        .expect("pgbench on PATH (Debian: postgresql-client)");
    std::fs::remove_file(&path).ok();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("pgbench printed tps")
}
