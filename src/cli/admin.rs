//! The admin verbs: `allot tenant …`, `allot token …`, `allot quota …` (through the admin
//! service, with an admin token), and `allot admin token create` (local: the first token).

use std::io::Write as _;

use anyhow::Context;
use clap::Subcommand;

use super::client::Target;
use super::failed;
use crate::proto::admin_pb as pb;

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        /// 1 to 63 lowercase letters, digits, '-', '_' and '.'.
        name: String,
    },
    /// Delete a tenant with its tokens and quota (refused while it holds pools).
    Delete {
        name: String,
        /// Delete its pools and addresses too.
        #[arg(long)]
        force: bool,
    },
    /// List the tenants.
    List,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a tenant and print it (the only time it is shown).
    Create {
        /// The tenant it acts for.
        tenant: String,
        /// read (ListPools, GetIpamState), write (pools and addresses) or admin.
        #[arg(long, default_value = "write")]
        role: String,
        /// What it is for, shown in listings.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a token: calls with it fail from then on, on every replica.
    Revoke {
        /// The token's id (16 hex digits, as `token list` shows it).
        token_id: String,
    },
    /// List a tenant's tokens (never their secrets).
    List { tenant: String },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a tenant's limits (0: none); limits not given keep their value.
    Set {
        tenant: String,
        /// Pools held at once.
        #[arg(long)]
        max_pools: Option<u64>,
        /// Addresses allocated at once, over all its pools.
        #[arg(long)]
        max_addresses: Option<u64>,
        /// Calls per second, on each replica.
        #[arg(long)]
        requests_per_second: Option<u64>,
    },
    /// Show a tenant's limits and what it uses.
    Get { tenant: String },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Admin tokens made without a server.
    #[command(subcommand)]
    Token(AdminTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Print a fresh admin token, for `allot serve --admin-token-file`.
    Create {
        /// Write it to this new file (mode 600) instead of printing it.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
}

pub async fn tenant(target: &Target, cmd: TenantCommand) -> anyhow::Result<()> {
    let mut c = target.admin().await?;
    match cmd {
        TenantCommand::Create { name } => {
            c.create_tenant(pb::CreateTenantRequest { name: name.clone() })
                .await
                .map_err(failed)?;
            println!("created tenant {name}");
        }
        TenantCommand::Delete { name, force } => {
            c.delete_tenant(pb::DeleteTenantRequest {
                name: name.clone(),
                force,
            })
            .await
            .map_err(failed)?;
            println!("deleted tenant {name}");
        }
        TenantCommand::List => {
            let r = c
                .list_tenants(pb::ListTenantsRequest {})
                .await
                .map_err(failed)?;
            let rows: Vec<Vec<String>> = r
                .get_ref()
                .tenants
                .iter()
                .map(|t| vec![t.name.clone(), date(t.created_at)])
                .collect();
            print!("{}", table(&["TENANT", "CREATED"], &rows));
        }
    }
    Ok(())
}

pub async fn token(target: &Target, cmd: TokenCommand) -> anyhow::Result<()> {
    let mut c = target.admin().await?;
    match cmd {
        TokenCommand::Create {
            tenant,
            role,
            description,
        } => {
            let r = c
                .create_token(pb::CreateTokenRequest {
                    tenant: tenant.clone(),
                    role: role.clone(),
                    description,
                })
                .await
                .map_err(failed)?;
            let r = r.get_ref();
            // The token alone on stdout, for `TOKEN=$(allot token create …)`.
            println!("{}", r.token);
            eprintln!(
                "token {} ({role}, tenant {tenant}) created: this is the only time it is shown",
                r.token_id
            );
        }
        TokenCommand::Revoke { token_id } => {
            c.revoke_token(pb::RevokeTokenRequest {
                token_id: token_id.clone(),
            })
            .await
            .map_err(failed)?;
            println!("revoked token {token_id}");
        }
        TokenCommand::List { tenant } => {
            let r = c
                .list_tokens(pb::ListTokensRequest { tenant })
                .await
                .map_err(failed)?;
            let rows: Vec<Vec<String>> = r
                .get_ref()
                .tokens
                .iter()
                .map(|t| {
                    vec![
                        t.token_id.clone(),
                        t.role.clone(),
                        date(t.created_at),
                        t.description.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["TOKEN ID", "ROLE", "CREATED", "DESCRIPTION"], &rows)
            );
        }
    }
    Ok(())
}

pub async fn quota(target: &Target, cmd: QuotaCommand) -> anyhow::Result<()> {
    let mut c = target.admin().await?;
    match cmd {
        QuotaCommand::Set {
            tenant,
            max_pools,
            max_addresses,
            requests_per_second,
        } => {
            let now = c
                .get_quota(pb::GetQuotaRequest {
                    tenant: tenant.clone(),
                })
                .await
                .map_err(failed)?
                .into_inner()
                .quota
                .unwrap_or_default();
            let quota = pb::Quota {
                max_pools: max_pools.unwrap_or(now.max_pools),
                max_addresses: max_addresses.unwrap_or(now.max_addresses),
                requests_per_second: requests_per_second.unwrap_or(now.requests_per_second),
            };
            c.set_quota(pb::SetQuotaRequest {
                tenant: tenant.clone(),
                quota: Some(quota),
            })
            .await
            .map_err(failed)?;
            println!("quota of {tenant} set");
        }
        QuotaCommand::Get { tenant } => {
            let r = c
                .get_quota(pb::GetQuotaRequest { tenant })
                .await
                .map_err(failed)?
                .into_inner();
            let q = r.quota.unwrap_or_default();
            let limit = |n: u64| {
                if n == 0 {
                    "none".to_owned()
                } else {
                    n.to_string()
                }
            };
            let rows = vec![
                vec!["pools".to_owned(), limit(q.max_pools), r.pools.to_string()],
                vec![
                    "addresses".to_owned(),
                    limit(q.max_addresses),
                    r.addresses.to_string(),
                ],
                vec![
                    "requests per second".to_owned(),
                    limit(q.requests_per_second),
                    "-".to_owned(),
                ],
            ];
            print!("{}", table(&["LIMIT", "MAX", "IN USE"], &rows));
        }
    }
    Ok(())
}

/// `allot admin token create`: a token made here, for the server's --admin-token-file.
pub fn local(cmd: AdminCommand) -> anyhow::Result<()> {
    let AdminCommand::Token(AdminTokenCommand::Create { output }) = cmd;
    let issued = crate::auth::issue().context("the operating system's random source")?;
    match output {
        None => println!("{}", issued.token),
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
            writeln!(file, "{}", issued.token)
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "admin token {} written to {} (mode 600)",
                issued.id,
                path.display()
            );
        }
    }
    Ok(())
}

/// A table: left-aligned columns two spaces apart, no padding after the last.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`. (Hand-written, Howard Hinnant's civil-from-days:
/// no date crate is in the build for one line of output.)
pub(super) fn date(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(date(1_795_821_296), "2026-11-27 23:14:56 UTC");
        assert_eq!(date(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn tables_line_up() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxyz  1\nq    22\n");
    }
}
