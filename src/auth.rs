//! Who may do what: bearer tokens and roles, tenant names, and the [`Authenticator`] that
//! checks a call's credentials against the directory.
//!
//! A token reads `allot_<id>_<secret>`: a 64-bit id, which names the token in listings, logs
//! and the audit trail, and a 256-bit secret, which exists only in the caller's hands. The
//! store keeps the id and a SHA-256 of the secret, never the secret; a presented token is found
//! by its id and its secret checked against the hash in constant time. No type here prints a
//! secret: `Debug` shows the id only.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

mod authenticator;

pub use authenticator::{
    Authenticator, Caller, Mode, Need, PeerCert, RETRY_AFTER_HEADER, RetryAfter, TENANT_HEADER,
};

/// Longest tenant name, in bytes.
pub const MAX_TENANT_LEN: usize = 63;

/// Checks a tenant name: 1 to 63 lowercase letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit. (No `+`: the records of a tenant's remote pools are kept under
/// `<tenant>+remote:<space>`, which no tenant can be named.)
///
/// # Errors
/// Why the name is refused.
pub fn check_tenant_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name.len() > MAX_TENANT_LEN {
        Err("longer than 63 bytes")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Err("must start with a lowercase letter or a digit")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        Err("only lowercase letters, digits, '-', '_' and '.' are allowed")
    } else {
        Ok(())
    }
}

/// The prefix every token starts with, so that a leaked one is recognisable (secret scanners)
/// and a string that is not one is refused before any lookup.
const PREFIX: &str = "allot_";
/// Bytes of a token id and of a secret.
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Its tenant's `ListPools` and `GetIpamState` only.
    Read,
    /// Its tenant's pools and addresses.
    Write,
    /// Tenants and tokens, and any tenant's pools when it names the tenant.
    Admin,
}

impl Role {
    /// The role's name, as the API and the CLI spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Read, Self::Write, Self::Admin]
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected read, write or admin"))
    }
}

/// The public half of a token: what names it everywhere (16 hex digits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId([u8; ID_BYTES]);

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for TokenId {
    type Err = Malformed;

    fn from_str(s: &str) -> Result<Self, Malformed> {
        decode_hex(s).map(Self)
    }
}

/// What the store keeps of a secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A token as a caller presents it: its id, and its secret (never shown).
#[derive(Clone)]
pub struct Presented {
    pub id: TokenId,
    secret: [u8; SECRET_BYTES],
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presented")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A string that is not a token of this form. It says nothing of the string: it may be a
/// mistyped secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an allot token (allot_<16 hex digits>_<64 hex digits>)")]
pub struct Malformed;

/// Lowercase hex of exactly `N` bytes.
fn decode_hex<const N: usize>(s: &str) -> Result<[u8; N], Malformed> {
    let mut out = [0u8; N];
    let canonical = s.len() == 2 * N && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !canonical {
        return Err(Malformed);
    }
    hex::decode_to_slice(s, &mut out).map_err(|_| Malformed)?;
    Ok(out)
}

impl FromStr for Presented {
    type Err = Malformed;

    fn from_str(s: &str) -> Result<Self, Malformed> {
        let rest = s.strip_prefix(PREFIX).ok_or(Malformed)?;
        let (id, secret) = rest.split_once('_').ok_or(Malformed)?;
        Ok(Self {
            id: id.parse()?,
            secret: decode_hex(secret)?,
        })
    }
}

impl Presented {
    /// Tells whether the secret is the one `stored` was made from, in time independent of
    /// where they differ (`subtle`, already in the build for rustls).
    #[must_use]
    pub fn matches(&self, stored: &SecretHash) -> bool {
        use subtle::ConstantTimeEq;
        self.hash().0.ct_eq(&stored.0).into()
    }

    /// The hash the store would keep of this secret.
    #[must_use]
    pub fn hash(&self) -> SecretHash {
        hash(&self.secret)
    }
}

fn hash(secret: &[u8; SECRET_BYTES]) -> SecretHash {
    SecretHash(Sha256::digest(secret).into())
}

/// A new token: its id, the hash to store, and the token itself, to show once.
pub struct Issued {
    pub id: TokenId,
    pub hash: SecretHash,
    pub token: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Makes a new token from the operating system's random source.
///
/// # Errors
/// The random source failed (the caller must not fall back to a weaker one).
pub fn issue() -> Result<Issued, getrandom::Error> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    Ok(Issued {
        id: TokenId(id),
        hash: hash(&secret),
        token: format!("{PREFIX}{}_{}", hex::encode(id), hex::encode(secret)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_issued_token_matches_its_hash_and_no_other() {
        let a = issue().unwrap();
        let b = issue().unwrap();
        assert_ne!(a.id, b.id);
        assert_ne!(a.token, b.token);
        let presented: Presented = a.token.parse().unwrap();
        assert_eq!(presented.id, a.id);
        assert!(presented.matches(&a.hash));
        assert!(!presented.matches(&b.hash));
        // One bit off in the secret: refused.
        let mut flipped = a.token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped: Presented = String::from_utf8(flipped).unwrap().parse().unwrap();
        assert!(!flipped.matches(&a.hash));
    }

    #[test]
    fn secrets_never_print() {
        let a = issue().unwrap();
        let secret = a.token.rsplit('_').next().unwrap().to_owned();
        let shown = format!(
            "{a:?} {:?} {:?}",
            a.token.parse::<Presented>().unwrap(),
            a.hash
        );
        assert!(!shown.contains(&secret), "{shown}");
        assert!(shown.contains(&a.id.to_string()));
    }

    #[test]
    fn only_the_canonical_form_is_a_token() {
        let good = issue().unwrap().token;
        assert!(good.parse::<Presented>().is_ok());
        assert_eq!(good.len(), 6 + 16 + 1 + 64);
        let upper = good.to_uppercase().replacen("ALLOT_", "allot_", 1);
        for bad in [
            String::new(),
            "allot_".to_owned(),
            good[1..].to_owned(),
            format!("{good}0"),
            good[..good.len() - 1].to_owned(),
            good.replacen('_', "-", 2),
            upper,
            format!(" {good}"),
            "allot_zzzzzzzzzzzzzzzz_00".to_owned(),
            "x".repeat(1 << 16),
        ] {
            assert_eq!(
                bad.parse::<Presented>().map(|p| p.id),
                Err(Malformed),
                "{bad:.40}"
            );
        }
    }

    #[test]
    fn roles_have_one_spelling() {
        for role in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!("".parse::<Role>().is_err());
    }
}
