//! Fresh PostgreSQL databases for tests, on the server `DATABASE_URL` names (plain `cargo test`
//! finds the local one through `.cargo/config.toml`; scripts/test.sh finds, starts or installs
//! one). Without a server there, each test fails at once with one line saying what to start —
//! never a skip, never a wait on a pool's timeout.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

use super::{MIGRATOR, PgStore};

/// How long a test waits for the server to answer before failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A migrated database of its own, dropped with the value.
pub(crate) struct TestDb {
    pub(crate) pool: PgPool,
    name: String,
    admin: PgConnectOptions,
}

fn server() -> (String, PgConnectOptions) {
    // Set by .cargo/config.toml for plain `cargo test`, or by the environment (scripts/test.sh).
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL is not set: point it at a PostgreSQL server, or run scripts/test.sh")
    });
    let options = url.parse().unwrap_or_else(|e| {
        panic!("DATABASE_URL={url:?} is not a PostgreSQL URL ({e}): point it at a server")
    });
    (url, options)
}

async fn connect(url: &str, options: &PgConnectOptions) -> PgConnection {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options));
    match connected.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "this test needs PostgreSQL, and none answers at {url} ({e}): start one there \
             (README.md, Run the tests), or set DATABASE_URL, or run scripts/test.sh"
        ),
        Err(_) => panic!(
            "this test needs PostgreSQL, and {url} did not answer within {CONNECT_TIMEOUT:?}: \
             start one there (README.md, Run the tests), or set DATABASE_URL, or run scripts/test.sh"
        ),
    }
}

impl TestDb {
    /// Creates and migrates a database on the test server.
    ///
    /// # Panics
    /// With one line saying what to start, when no server answers.
    pub(crate) async fn fresh() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (url, admin) = server();
        let name = format!(
            "allot_unit_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = connect(&url, &admin).await;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("creating a test database on {url}: {e}"));
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(admin.clone().database(&name))
            .await
            .unwrap_or_else(|e| panic!("connecting to the test database {name}: {e}"));
        MIGRATOR
            .run(&pool)
            .await
            .unwrap_or_else(|e| panic!("migrating the test database {name}: {e}"));
        Self { pool, name, admin }
    }

    /// A store on the database.
    pub(crate) fn store(&self) -> PgStore {
        PgStore::from_pool(self.pool.clone(), Duration::from_secs(30))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), self.admin.clone());
        // Drop runs inside the test's runtime: drop the database from a thread of its own.
        let dropped = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = admin.connect().await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await;
                }
            });
        });
        let _ = dropped.join();
    }
}
