//! The SQL stores' schema migrations, embedded in the binary from `migrations/<backend>/`.
//!
//! What `sqlx::migrate!` does, without its proc-macro crates in a release build (they compile
//! sqlx and SQLite a second time for the compiler; see BENCHMARKS.md, "Build"). Versions,
//! descriptions and checksums are sqlx's own, so a database migrated either way agrees; a test
//! compares them with `sqlx::migrate!`'s, so a file left out of a list fails it.

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Embeds the migration files of one backend: `(file name, SQL)`, in order.
macro_rules! files {
    ($backend:literal: $($file:literal),+ $(,)?) => {
        &[$((
            $file,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $backend, "/", $file)),
        )),+]
    };
}

/// The PostgreSQL schema.
pub static POSTGRES: LazyLock<Migrator> = LazyLock::new(|| {
    migrator(files!(
        "postgres": "0001_init.sql", "0002_remote_pools.sql", "0003_retired.sql", "0004_tenancy.sql",
        "0005_owners.sql", "0006_pool_requests.sql"
    ))
});

/// The SQLite schema.
pub static SQLITE: LazyLock<Migrator> = LazyLock::new(|| {
    migrator(files!(
        "sqlite": "0001_init.sql", "0002_remote_pools.sql", "0003_retired.sql", "0004_tenancy.sql",
        "0005_owners.sql", "0006_pool_requests.sql"
    ))
});

/// Reads migrations as sqlx names them: `<version>_<description>.sql`, the description with
/// `_` as spaces, `-- no-transaction` on the first line to run outside a transaction.
fn migrator(files: &[(&str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|&(file, sql)| {
            let (version, rest) = file.split_once('_').unwrap_or((file, file));
            // The file names are the literals above: a malformed one fails the test below.
            let version = version.parse().unwrap_or(0);
            let description = rest.trim_end_matches(".sql").replace('_', " ");
            Migration::new(
                version,
                Cow::Owned(description),
                MigrationType::Simple,
                SqlStr::from_static(sql),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// The versions `migrator` has that `applied` (versions a database holds) does not.
pub(super) fn pending(migrator: &Migrator, applied: &[i64]) -> Vec<(i64, String)> {
    migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| (m.version, m.description.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(embedded: &Migrator, scanned: &Migrator) {
        let key = |m: &Migration| {
            (
                m.version,
                m.description.to_string(),
                m.checksum.to_vec(),
                m.no_tx,
            )
        };
        let a: Vec<_> = embedded.iter().map(key).collect();
        let b: Vec<_> = scanned.iter().map(key).collect();
        assert_eq!(
            a, b,
            "the embedded list is the directory's, with sqlx's checksums"
        );
        assert!(a.iter().all(|(version, ..)| *version > 0));
    }

    #[test]
    fn embedded_migrations_are_the_directorys() {
        same(&POSTGRES, &sqlx::migrate!("./migrations/postgres"));
        same(&SQLITE, &sqlx::migrate!("./migrations/sqlite"));
    }
}
