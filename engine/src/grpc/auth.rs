//! Who may call what: a caller proves its role with a bearer token in the `authorization`
//! metadata. The configuration holds only SHA-256 hashes of tokens; a presented token is
//! hashed and compared with every configured hash in constant time.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::hex;
use crate::server::config::{Role, TokenEntry};

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: Arc<Vec<([u8; 32], Role)>>,
}

impl Authenticator {
    /// From the configuration's entries (whose hashes `ServerConfig::check` validated).
    pub fn new(entries: &[TokenEntry]) -> Authenticator {
        let tokens = entries
            .iter()
            .filter_map(|entry| Some((hex::decode_32(&entry.sha256).ok()?, entry.role)))
            .collect();
        Authenticator {
            tokens: Arc::new(tokens),
        }
    }

    /// The role the request's bearer token proves: `UNAUTHENTICATED` without a token or
    /// with an unknown one.
    pub fn role_of<T>(&self, request: &Request<T>) -> Result<Role, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token =
            header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
                Status::unauthenticated("authorization must be \"Bearer <token>\"")
            })?;
        let presented = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut found = None;
        // Every configured hash is compared in full, whatever matches, so that the time
        // taken says nothing about which bytes matched.
        for (hash, role) in self.tokens.iter() {
            let difference = hash
                .iter()
                .zip(presented.as_ref())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(*role);
            }
        }
        found.ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// An interceptor that lets through callers of the `allowed` roles only:
    /// `PERMISSION_DENIED` for a known token of another role.
    pub fn require(
        &self,
        allowed: &'static [Role],
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let authenticator = self.clone();
        move |request: Request<()>| {
            let role = authenticator.role_of(&request)?;
            if allowed.contains(&role) {
                Ok(request)
            } else {
                let names: Vec<&str> = allowed.iter().map(|role| role.name()).collect();
                Err(Status::permission_denied(format!(
                    "the {} role may not call this service (allowed: {})",
                    role.name(),
                    names.join(", ")
                )))
            }
        }
    }
}

/// The token of a `Bearer` credential. The scheme's name is case-insensitive (RFC 7235,
/// section 2.1), so `bearer` and `BEARER` are accepted as well.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// The client side lives with the gate's client (`fareway_gate::client`).
pub use fareway_gate::client::Bearer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
