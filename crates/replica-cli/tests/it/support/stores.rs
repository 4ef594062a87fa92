//! Setting up the emulators' buckets and containers for a test.

use std::process::Command;

/// Creates an Azurite container with an account SAS minted by Python's standard
/// library (an implementation of the signing algorithm independent of the backend's).
const CREATE_CONTAINER_PY: &str = r#"
import base64, datetime, hashlib, hmac, sys, urllib.parse, urllib.request
endpoint, account, key, container = sys.argv[1:5]
now = datetime.datetime.now(datetime.timezone.utc)
fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
st, se = fmt(now - datetime.timedelta(minutes=5)), fmt(now + datetime.timedelta(hours=1))
sv = "2025-01-05"
sts = "\n".join([account, "rwdlac", "b", "sco", st, se, "", "https,http", sv, "", ""])
sig = base64.b64encode(hmac.new(base64.b64decode(key), sts.encode(), hashlib.sha256).digest()).decode()
q = urllib.parse.urlencode({"sv": sv, "ss": "b", "srt": "sco", "sp": "rwdlac", "st": st, "se": se, "spr": "https,http", "sig": sig})
req = urllib.request.Request(f"{endpoint}/{container}?restype=container&{q}", method="PUT", headers={"x-ms-version": sv})
urllib.request.urlopen(req).read()
"#;

/// Creates `container` on the Azurite at `endpoint`.
pub fn create_abs_container(endpoint: &str, account: &str, key: &str, container: &str) {
    let o = Command::new("python3")
        .args(["-c", CREATE_CONTAINER_PY])
        .args([endpoint, account, key, container])
        .output()
        .expect("running python3 to create the container");
    assert!(
        o.status.success(),
        "creating container {container} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
