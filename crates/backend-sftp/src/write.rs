//! Puts: upload to a hidden temp file, set times and bits, rename into place.

use super::*;

pub(crate) fn unix_secs(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

pub(crate) fn mtime_of(a: &FileAttributes) -> Option<SystemTime> {
    a.mtime
        .map(|s| UNIX_EPOCH + Duration::from_secs(u64::from(s)))
}

/// Only the permission bits `bits`, for an open, mkdir or setstat.
pub(crate) fn with_permissions(bits: u32) -> FileAttributes {
    FileAttributes {
        permissions: Some(bits),
        ..FileAttributes::empty()
    }
}

/// Creates `dir` and its missing parents (never above the root's parent chain that
/// already exists), each with exactly `bits`: asked for at mkdir (so it is never
/// wider, whatever the server's umask), then set, since the umask may have narrowed it.
pub(crate) async fn mkdir_all(s: &RawSftpSession, dir: &str, bits: u32) -> Result<(), SftpError> {
    let mut missing = Vec::new();
    let mut cur = dir.to_owned();
    loop {
        match s.stat(cur.as_str()).await {
            Ok(_) => break,
            Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => {
                missing.push(cur.clone());
                match cur.rsplit_once('/') {
                    Some((parent, _)) if !parent.is_empty() => cur = parent.to_owned(),
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for d in missing.into_iter().rev() {
        match s.mkdir(d.as_str(), with_permissions(bits)).await {
            Ok(_) => {
                s.setstat(d.as_str(), with_permissions(bits)).await?;
            }
            // A concurrent put may have created it (then it is left as it is).
            Err(e) => {
                if !s.stat(d.as_str()).await.is_ok_and(|a| a.attrs.is_dir()) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn temp_name(dest: &str) -> String {
    let (dir, name) = dest.rsplit_once('/').unwrap_or(("", dest));
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let nonce: u64 = rand::random();
    format!("{dir}/.{}.{nonce:016x}.tmp", &name[..cut])
}

/// Uploads `body` to the open `handle`, keeping several writes in flight.
pub(crate) async fn upload(
    c: &Conn,
    handle: &str,
    key: &str,
    body: &Payload,
) -> Result<(), OpError> {
    let mut inflight: JoinSet<Result<(), SftpError>> = JoinSet::new();
    let mut offset = 0u64;
    let mut failed: Option<SftpError> = None;
    let mut file = match body {
        Payload::Bytes(_) => None,
        Payload::File(p) => Some((
            p,
            tokio::fs::File::open(p)
                .await
                .map_err(|e| source_error(key, p, e))?,
        )),
    };
    loop {
        let data = match (&mut file, body) {
            (Some((p, f)), _) => {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0;
                while n < CHUNK {
                    let r = f
                        .read(&mut buf[n..])
                        .await
                        .map_err(|e| source_error(key, p, e))?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                buf.truncate(n);
                buf
            }
            (None, Payload::Bytes(b)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = (start + CHUNK).min(b.len());
                b[start..end].to_vec()
            }
            (None, Payload::File(_)) => Vec::new(),
        };
        if data.is_empty() {
            break;
        }
        let len = data.len() as u64;
        let s = c.sftp.clone();
        let h = handle.to_owned();
        let at = offset;
        inflight.spawn(async move { s.write(h, at, data).await.map(|_| ()) });
        offset += len;
        if inflight.len() >= WRITES_IN_FLIGHT
            && let Some(r) = inflight.join_next().await
            && let Err(e) = r.unwrap_or_else(|e| Err(SftpError::IO(e.to_string())))
        {
            failed = Some(e);
            break;
        }
    }
    while let Some(r) = inflight.join_next().await {
        if let Err(e) = r.unwrap_or_else(|e| Err(SftpError::IO(e.to_string()))) {
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) => Err(OpError::Sftp(key.to_owned(), e)),
        None => Ok(()),
    }
}

pub(crate) fn source_error(key: &str, path: &std::path::Path, e: io::Error) -> OpError {
    OpError::Store(StoreError::Other {
        op: Op::Put,
        key: key.to_owned(),
        source: Box::new(io::Error::new(
            e.kind(),
            format!("reading payload file {}: {e}", path.display()),
        )),
    })
}

pub(crate) async fn put_once(
    c: Arc<Conn>,
    key: &str,
    dest: &str,
    body: &Payload,
    opts: &PutOptions,
    mode: FileMode,
) -> Result<(), OpError> {
    let s = &c.sftp;
    let tmp = temp_name(dest);
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::TRUNCATE;
    // Asked for at open, so the file is never wider while it is written.
    let create = with_permissions(mode.file());
    let handle = match s.open(tmp.as_str(), flags, create.clone()).await {
        Ok(h) => h.handle,
        Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => {
            if let Some((dir, _)) = dest.rsplit_once('/') {
                mkdir_all(s, dir, mode.dir()).await.map_err(sftp(key))?;
            }
            s.open(tmp.as_str(), flags, create)
                .await
                .map_err(sftp(key))?
                .handle
        }
        Err(e) => return Err(OpError::Sftp(key.to_owned(), e)),
    };
    let result = async {
        upload(&c, &handle, key, body).await?;
        // The server's umask may have narrowed the bits asked for at open: set them
        // exactly, with the LTX time, in one request.
        let secs = opts.timestamp.map(unix_secs);
        let attrs = FileAttributes {
            atime: secs,
            mtime: secs,
            ..with_permissions(mode.file())
        };
        s.fsetstat(handle.as_str(), attrs)
            .await
            .map_err(sftp(key))?;
        if c.fsync {
            s.fsync(handle.as_str()).await.map_err(sftp(key))?;
        }
        Ok::<(), OpError>(())
    }
    .await;
    let closed = s.close(handle.as_str()).await;
    let result = result.and_then(|()| closed.map(|_| ()).map_err(sftp(key)));
    let result = match result {
        Ok(()) => place(&c, key, &tmp, dest, opts.mode).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = s.remove(tmp.as_str()).await;
    }
    result
}

/// Moves the finished temporary file into place.
pub(crate) async fn place(
    c: &Conn,
    key: &str,
    tmp: &str,
    dest: &str,
    mode: PutMode,
) -> Result<(), OpError> {
    let s = &c.sftp;
    match mode {
        PutMode::CreateOnly => match s.rename(tmp, dest).await {
            Ok(_) => Ok(()),
            Err(e) if !is_connection_error(&e) => {
                // OpenSSH reports EEXIST from link(2) as a generic failure.
                if s.lstat(dest).await.is_ok() {
                    Err(StoreError::AlreadyExists {
                        key: key.to_owned(),
                    }
                    .into())
                } else {
                    Err(OpError::Sftp(key.to_owned(), e))
                }
            }
            Err(e) => Err(OpError::Sftp(key.to_owned(), e)),
        },
        PutMode::Overwrite => {
            if c.posix_rename {
                let mut data = Vec::with_capacity(tmp.len() + dest.len() + 8);
                for p in [tmp, dest] {
                    let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend_from_slice(p.as_bytes());
                }
                match s.extended(POSIX_RENAME, data).await.map_err(sftp(key))? {
                    Packet::Status(st) if st.status_code == StatusCode::Ok => Ok(()),
                    Packet::Status(st) => Err(OpError::Sftp(key.to_owned(), SftpError::Status(st))),
                    _ => Err(OpError::Sftp(key.to_owned(), SftpError::UnexpectedPacket)),
                }
            } else {
                // Without posix-rename the replace cannot be atomic: remove, then
                // rename. Readers may briefly see no object, never a partial one.
                warn!(
                    key,
                    "server lacks posix-rename@openssh.com; overwrite is not atomic"
                );
                match s.remove(dest).await {
                    Ok(_) => {}
                    Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => {}
                    Err(e) => return Err(OpError::Sftp(key.to_owned(), e)),
                }
                s.rename(tmp, dest).await.map(|_| ()).map_err(sftp(key))
            }
        }
    }
}
