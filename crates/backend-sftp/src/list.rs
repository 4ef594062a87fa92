//! Listing: a walk of only the directories that can hold matching keys.

use super::*;

/// Walks the directory for keys `dir_key*` (dir_key empty or ending in '/').
pub(crate) async fn walk(
    s: &RawSftpSession,
    root: &str,
    dir_key: &str,
    partial: &str,
    start_after: Option<&str>,
    out: &mut Vec<ObjectInfo>,
) -> Result<(), OpError> {
    let dir = join(root, dir_key.trim_end_matches('/'));
    let handle = match s.opendir(dir.as_str()).await {
        Ok(h) => h.handle,
        Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => return Ok(()),
        // Not a directory (a file at a prefix position): no keys below it.
        Err(e) if status_code(&e) == Some(StatusCode::Failure) => return Ok(()),
        Err(e) => return Err(OpError::Sftp(dir_key.to_owned(), e)),
    };
    let mut entries = Vec::new();
    let res = loop {
        match s.readdir(handle.as_str()).await {
            Ok(name) => entries.extend(name.files),
            Err(e) if status_code(&e) == Some(StatusCode::Eof) => break Ok(()),
            Err(e) => break Err(OpError::Sftp(dir_key.to_owned(), e)),
        }
    };
    let _ = s.close(handle.as_str()).await;
    res?;
    for entry in entries {
        let name = entry.filename;
        if name.starts_with('.') || !name.starts_with(partial) {
            continue;
        }
        let key = format!("{dir_key}{name}");
        let mut attrs = entry.attrs;
        if attrs.file_type().is_symlink() {
            match s.stat(join(root, &key)).await {
                Ok(a) => attrs = a.attrs,
                Err(_) => continue,
            }
        }
        if attrs.is_dir() {
            let sub = format!("{key}/");
            if let Some(after) = start_after
                && sub.as_str() < after
                && !after.starts_with(&sub)
            {
                continue;
            }
            Box::pin(walk(s, root, &sub, "", start_after, out)).await?;
            continue;
        }
        if !attrs.file_type().is_file() {
            continue;
        }
        if start_after.is_some_and(|a| key.as_str() <= a) {
            continue;
        }
        out.push(ObjectInfo {
            key,
            size: attrs.len(),
            last_modified: None,
            ltx_time: mtime_of(&attrs),
        });
    }
    Ok(())
}
