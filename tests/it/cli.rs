//! The `allot` client verbs against a running server.

use std::sync::Arc;

use allot::store::MemoryStore;

use crate::helpers::*;

async fn allot(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .await
        .expect("run allot");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_requests_releases_and_reports() {
    let app = spawn_app(Arc::new(MemoryStore::new())).await;
    let server = app.addr.to_string();
    let (ok, out, err) = allot(
        &server,
        &[
            "pool",
            "request",
            "--pool",
            "10.20.0.0/24",
            "--sub-pool",
            "10.20.0.128/25",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "local/10.20.0.0/24/10.20.0.128/25");
    let id = out.trim().to_owned();
    let (ok, out, _) = allot(
        &server,
        &["address", "request", &id, "--gateway", "10.20.0.1"],
    )
    .await;
    assert!(ok);
    assert_eq!(out.trim(), "10.20.0.1/24");
    let (ok, out, _) = allot(&server, &["address", "request", &id, "--serial"]).await;
    assert!(ok);
    assert_eq!(out.trim(), "10.20.0.128/24");
    let (ok, out, _) = allot(&server, &["pool", "list"]).await;
    assert!(ok);
    assert_eq!(out.trim(), id);

    let (ok, out, _) = allot(&server, &["state"]).await;
    assert!(ok);
    let row = out.lines().nth(1).expect("a row");
    assert!(row.starts_with(&id), "{out}");
    assert!(row.contains("  4  "), "in use: .0, .255, .1, .128: {out}");
    assert!(
        row.contains("126"),
        "free in the /25 (.128 taken, .255 reserved): {out}"
    );

    let (ok, out, _) = allot(&server, &["state", "--output", "json", &id]).await;
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(json[0]["pool_id"], id.as_str());
    assert_eq!(json[0]["allocated_ips_in_subnet"], 4);
    assert_eq!(json[0]["available_ips_in_ip_range_pool"], 126);
    assert_eq!(json[0]["available_ips_in_ip_range_pool_exact"], "126");

    // Driver options: the built-in driver takes none, and says which it refused.
    let (ok, _, err) = allot(
        &server,
        &[
            "pool",
            "request",
            "--pool",
            "10.21.0.0/24",
            "--option",
            "colour=red",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.starts_with("allot: INVALID_ARGUMENT: ") && err.contains("colour"),
        "{err}"
    );
    let (ok, _, err) = allot(&server, &["pool", "request", "--option", "colour"]).await;
    assert!(!ok && err.contains("KEY=VALUE"), "{err}");

    let (ok, out, _) = allot(&server, &["address", "release", &id, "10.20.0.128"]).await;
    assert_eq!(out.trim(), format!("released 10.20.0.128 in {id}"));
    assert!(ok);
    let (ok, _, err) = allot(&server, &["address", "release", &id, "10.20.0.255"]).await;
    assert!(!ok, "the broadcast address cannot be released");
    assert!(
        err.starts_with("allot: FAILED_PRECONDITION: ") && err.contains("10.20.0.255"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let (ok, out, _) = allot(&server, &["pool", "release", &id]).await;
    assert!(ok);
    assert_eq!(out.trim(), format!("released {id}"));
    let (ok, out, _) = allot(&server, &["state"]).await;
    assert!(ok);
    assert!(out.contains("(no pools)"), "{out}");
    let (ok, out, err) = allot(&server, &["pool", "list"]).await;
    assert!(ok && out.is_empty(), "{out}");
    assert_eq!(err.trim(), "(no pools)");
    app.stop().await;

    // A server that is not there: one line, non-zero.
    let (ok, _, err) = allot(&server, &["state"]).await;
    assert!(!ok);
    assert!(err.starts_with("allot: connecting to"), "{err}");
    assert_eq!(
        err.matches("tcp connect error").count(),
        1,
        "each cause once: {err}"
    );
    // An https:// server without a CA to trust is refused before any connection.
    let (ok, _, err) = allot(&format!("https://{server}"), &["state"]).await;
    assert!(!ok && err.contains("needs --ca-cert"), "{err}");
}

#[tokio::test]
async fn bad_flags_and_urls_are_one_line_errors() {
    let dir = TempDir::new("badflags");
    std::fs::write(dir.0.join("not-a-socket"), b"a file").unwrap();
    for args in [
        vec!["serve", "--listen", "nonsense"],
        vec!["serve", "--database-url", "mysql://x"],
        vec!["serve", "--default-address-pool", "base=10.0.0.0/8"],
        vec!["serve", "--log-format", "xml"],
        vec!["migrate", "--database-url", "oracle://x"],
        vec!["serve", "--address-space", "space=far,driver=magic"],
        vec!["serve", "--address-space", "space=far,driver=remote"],
        vec![
            "serve",
            "--database-url",
            "memory:",
            "--docker-plugin-socket",
            "not-a-socket",
        ],
        vec![
            "serve",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "--database-timeout",
            "500ms",
        ],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(&args)
            .current_dir(&dir.0)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?} says why");
    }
    // `migrate` creates the default file where it is run, says what it applied, and then
    // that there is nothing left to apply.
    let migrate = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["migrate"])
            .current_dir(&dir.0)
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        migrate().await,
        "database sqlite://allot.db migrated: 1 init, 2 remote pools, 3 retired, 4 tenancy, 5 owners, 6 pool requests\n"
    );
    assert!(dir.0.join("allot.db").exists());
    assert_eq!(
        migrate().await,
        "database sqlite://allot.db is up to date\n"
    );
}

/// Starts that would expose the service are refused, each saying why and what to do.
#[tokio::test]
async fn insecure_starts_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("insecure");
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let token = allot::auth::issue().unwrap().token;
    let good = write("admin-token", &format!("{token}\n"), 0o600);
    let open = write("open-token", &token, 0o644);
    let garbage = write("garbage-token", "hunter2", 0o600);
    let cases: [(&[&str], &str); 6] = [
        (&["--listen", "0.0.0.0:0"], "without authentication"),
        (
            &["--listen", "0.0.0.0:0", "--admin-token-file", &good],
            "in plaintext",
        ),
        (&["--admin-token-file", &open], "chmod 600"),
        (
            &["--auth", "none", "--admin-token-file", &good],
            "contradict",
        ),
        (&["--admin-token-file", &garbage], "not an allot token"),
        (
            &["--docker-plugin-tenant", "Bad!"],
            "--docker-plugin-tenant",
        ),
    ];
    for (args, why) in cases {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["serve", "--database-url", "memory:"])
            .args(args)
            .current_dir(&dir.0)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(!err.contains(&token), "{args:?} printed the token: {err}");
    }
}

/// The hosted flow through the real binaries: the first admin token from `allot admin token
/// create`, tenants and tokens made with the CLI, each tenant's calls with its own token, and
/// an audit line per mutation that names the token's id and never its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_tenants_with_the_cli() {
    let dir = TempDir::new("hosted");
    let admin_file = dir.0.join("admin-token");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["admin", "token", "create", "--output"])
        .arg(&admin_file)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["admin", "token", "create", "--output"])
        .arg(&admin_file)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing token file is not overwritten"
    );
    let admin_file = admin_file.display().to_string();
    let server = Server::start_with(&dir.db_url(), &dir.0, &["--admin-token-file", &admin_file]);
    let addr = server.addr.to_string();
    let run = |args: Vec<String>| {
        let addr = addr.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
                .arg("--server")
                .arg(&addr)
                .args(&args)
                .env_remove("ALLOT_TOKEN")
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let as_admin = |args: &[&str]| {
        let mut v = vec!["--token-file".to_owned(), admin_file.clone()];
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    };
    let (ok, out, err) = run(as_admin(&["tenant", "create", "acme"])).await;
    assert!(ok && out == "created tenant acme\n", "{out}{err}");
    let (ok, out, err) = run(as_admin(&["tenant", "list"])).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("TENANT "), "{out}");
    assert!(
        out.contains("\nacme ") && out.contains("\ndefault "),
        "{out}"
    );
    let (ok, token, err) = run(as_admin(&[
        "token",
        "create",
        "acme",
        "--role",
        "write",
        "--description",
        "ci",
    ]))
    .await;
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("allot_"), "{token}");
    assert!(err.contains("the only time it is shown"), "{err}");
    let id = token["allot_".len()..]
        .split('_')
        .next()
        .unwrap()
        .to_owned();

    // The tenant's own calls, with its token; none without one.
    let with = |args: &[&str]| {
        let mut v = vec!["--token".to_owned(), token.clone()];
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    };
    let (ok, out, err) = run(with(&["pool", "request", "--pool", "10.9.0.0/24"])).await;
    assert!(ok && out == "local/10.9.0.0/24\n", "{out}{err}");
    let (ok, out, err) = run(with(&["address", "request", "local/10.9.0.0/24"])).await;
    assert!(ok && out == "10.9.0.1/24\n", "{out}{err}");
    let (ok, _, err) = run(vec!["state".into()]).await;
    assert!(
        !ok && err.contains("UNAUTHENTICATED: missing credentials"),
        "{err}"
    );
    // A token on the command line wins over ALLOT_TOKEN_FILE in the environment.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["--server", &addr, "--token", &token, "pool", "list"])
        .env("ALLOT_TOKEN_FILE", &admin_file)
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "local/10.9.0.0/24\n");
    // The admin sees the tenant's pools by naming it, and its own (default) tenant has none.
    let (ok, out, err) = run(as_admin(&["--tenant", "acme", "pool", "list"])).await;
    assert!(ok && out == "local/10.9.0.0/24\n", "{out}{err}");
    let (ok, out, _) = run(as_admin(&["pool", "list"])).await;
    assert!(ok && out.is_empty());

    // Quotas: set, shown with what is in use, enforced with the figures named.
    let (ok, _, err) = run(as_admin(&["quota", "set", "acme", "--max-addresses", "2"])).await;
    assert!(ok, "{err}");
    let (ok, out, err) = run(as_admin(&["quota", "get", "acme"])).await;
    assert!(ok, "{err}");
    assert!(out.contains("\naddresses            2     1\n"), "{out}");
    let (ok, _, err) = run(with(&["address", "request", "local/10.9.0.0/24"])).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(with(&["address", "request", "local/10.9.0.0/24"])).await;
    assert!(
        !ok && err.contains("RESOURCE_EXHAUSTED")
            && err.contains("quota of 2 addresses (2 in use)"),
        "{err}"
    );

    // Listing shows the token without its secret; revoked, it is refused.
    let (ok, out, err) = run(as_admin(&["token", "list", "acme"])).await;
    assert!(
        ok && out.contains(&id) && out.contains("write") && out.contains("ci"),
        "{out}{err}"
    );
    assert!(!out.contains(&token));
    let (ok, _, err) = run(as_admin(&["token", "revoke", &id])).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(with(&["pool", "list"])).await;
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");
    let (ok, _, err) = run(as_admin(&["tenant", "delete", "acme"])).await;
    assert!(
        !ok && err.contains("FAILED_PRECONDITION") && err.contains("force"),
        "{err}"
    );
    let (ok, _, err) = run(as_admin(&["tenant", "delete", "acme", "--force"])).await;
    assert!(ok, "{err}");

    // The audit trail: the token's id on its mutations, never a secret.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let audit = server.audit();
    let secret = std::fs::read_to_string(&admin_file).unwrap();
    assert!(
        audit
            .iter()
            .all(|l| !l.contains(&token) && !l.contains(secret.trim()))
    );
    let mine: Vec<&String> = audit
        .iter()
        .filter(|l| l.contains(&format!("token:{id}")))
        .collect();
    assert!(
        mine.iter().any(|l| l.contains("\"rpc\":\"RequestPool\"")
            && l.contains("local/10.9.0.0/24")
            && l.contains("\"code\":\"OK\"")),
        "{mine:#?}"
    );
    assert!(
        mine.iter().any(|l| l.contains("\"rpc\":\"RequestAddress\"")
            && l.contains("\"code\":\"RESOURCE_EXHAUSTED\"")),
        "{mine:#?}"
    );
    assert!(
        audit.iter().any(|l| l.contains("\"rpc\":\"DeleteTenant\"")),
        "{audit:#?}"
    );
}
