//! Account SAS minting from a storage account key (the 1.x SDK has no shared-key
//! signing). The algorithm is the documented one for service version 2020-12-06 and
//! later: HMAC-SHA256, keyed with the base64-decoded account key, over
//!
//! ```text
//! account \n permissions \n services \n resource types \n start \n expiry \n
//! ip \n protocol \n version \n encryption scope \n
//! ```
//!
//! and the token is `sv, ss, srt, sp, st, se, spr, sig` as query parameters.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

/// The SAS service version (`sv`) minted tokens use.
pub const SAS_VERSION: &str = "2025-01-05";
/// Blob service only.
const SERVICES: &str = "b";
/// Service, container and object.
const RESOURCE_TYPES: &str = "sco";
/// Read, write, delete, list, add, create (in the documented order).
const PERMISSIONS: &str = "rwdlac";

/// A storage account key. Its `Debug` shows nothing of the key; there is no `Display`.
#[derive(Clone)]
pub struct AccountKey(Vec<u8>);

impl AccountKey {
    /// Decodes the base64 key as the portal shows it. The error never echoes the key.
    pub fn from_base64(key: &str) -> Result<Self, String> {
        STANDARD
            .decode(key.trim())
            .map(AccountKey)
            .map_err(|_| "the account key is not valid base64".to_owned())
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(<redacted>)")
    }
}

/// Formats a SAS time: `YYYY-MM-DDThh:mm:ssZ` in UTC.
pub fn sas_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The string to sign of an account SAS (see the module docs).
pub fn string_to_sign(account: &str, start: &str, expiry: &str, protocol: &str) -> String {
    format!(
        "{account}\n{PERMISSIONS}\n{SERVICES}\n{RESOURCE_TYPES}\n{start}\n{expiry}\n\n{protocol}\n{SAS_VERSION}\n\n"
    )
}

/// HMAC-SHA256 of `message` with `key`, base64.
pub fn sign(key: &AccountKey, message: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(message.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// An account SAS valid from `start` to `expiry`, as `(name, value)` query pairs
/// (not yet percent-encoded). `https_only` restricts it to https (`spr=https`).
pub fn account_sas(
    account: &str,
    key: &AccountKey,
    start: OffsetDateTime,
    expiry: OffsetDateTime,
    https_only: bool,
) -> Vec<(&'static str, String)> {
    let (st, se) = (sas_time(start), sas_time(expiry));
    let spr = if https_only { "https" } else { "https,http" };
    let sig = sign(key, &string_to_sign(account, &st, &se, spr));
    vec![
        ("sv", SAS_VERSION.to_owned()),
        ("ss", SERVICES.to_owned()),
        ("srt", RESOURCE_TYPES.to_owned()),
        ("sp", PERMISSIONS.to_owned()),
        ("st", st),
        ("se", se),
        ("spr", spr.to_owned()),
        ("sig", sig),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_to_sign_layout() {
        let s = string_to_sign(
            "acct",
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            "https",
        );
        assert_eq!(
            s,
            "acct\nrwdlac\nb\nsco\n2026-01-01T00:00:00Z\n2026-01-01T01:00:00Z\n\nhttps\n2025-01-05\n\n"
        );
    }

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = AccountKey(b"Jefe".to_vec());
        let sig = sign(&key, "what do ya want for nothing?");
        let raw = STANDARD.decode(sig).expect("base64");
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        let key = AccountKey::from_base64("c2VjcmV0LWtleQ==").expect("key");
        assert_eq!(format!("{key:?}"), "AccountKey(<redacted>)");
        let err = AccountKey::from_base64("not base64 !!secret").expect_err("bad");
        assert!(!err.contains("secret"));
    }
}
