//! Permission bits for what `replica` creates: the spool, restored databases, and the
//! files of replicas kept on a filesystem (`file://`, SFTP). Everything follows the
//! database's own mode, so a private database never gets world-readable copies.
//!
//! Modes are set explicitly after creation (not left to the umask), because the umask
//! can only narrow: a 0640 database under `umask 077` must still get 0640 copies, and
//! one under `umask 022` must not get 0644 ones.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The permission bits (`rwxrwxrwx`) of a database, or asked for explicitly.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMode(u32);

impl FileMode {
    /// What a restore uses when the replica does not record its database's mode.
    pub const PRIVATE: FileMode = FileMode(0o600);

    /// `bits` if it holds permission bits only (at most `0o777`).
    pub fn new(bits: u32) -> Option<FileMode> {
        (bits <= 0o777).then_some(FileMode(bits))
    }

    /// The permission bits of an existing file (set-id and sticky bits dropped).
    pub fn of(meta: &fs::Metadata) -> FileMode {
        FileMode(meta.mode() & 0o777)
    }

    /// The mode of the file at `path`, if it exists.
    pub fn of_path(path: &std::path::Path) -> Option<FileMode> {
        fs::metadata(path).ok().map(|m| FileMode::of(&m))
    }

    /// Octal, with or without a leading `0` or `0o`: `0640`, `640`, `0o640`.
    pub fn parse(s: &str) -> Result<FileMode, String> {
        let t = s.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        let bad = || format!("{s:?} is not a file mode; write it in octal, such as 0600 or 0640");
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(bad());
        }
        u32::from_str_radix(digits, 8)
            .ok()
            .and_then(FileMode::new)
            .ok_or_else(bad)
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    /// Bits for a file we create and keep writing: the database's read and write bits
    /// (never execute), and always read and write for the owner, who is us.
    pub fn file(self) -> u32 {
        (self.0 & 0o666) | 0o600
    }

    /// Bits for a directory holding such files: [`Self::file`] plus search (x) wherever
    /// it grants read, so exactly those who may read the files can reach them.
    pub fn dir(self) -> u32 {
        let f = self.file();
        f | ((f & 0o444) >> 2)
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Debug for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileMode({self})")
    }
}

impl serde::Serialize for FileMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FileMode::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Sets `bits` on an open file unless it already has them (one `fstat`, and an
/// `fchmod` only when needed).
pub fn set_file(file: &File, bits: u32) -> io::Result<()> {
    if file.metadata()?.mode() & 0o7777 != bits {
        file.set_permissions(fs::Permissions::from_mode(bits))?;
    }
    Ok(())
}

/// Sets `bits` on `path` unless it already has them. Symbolic links are left alone.
pub fn set_path(path: &Path, bits: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.file_type().is_symlink() && meta.mode() & 0o7777 != bits {
        fs::set_permissions(path, fs::Permissions::from_mode(bits))?;
    }
    Ok(())
}

/// Creates a new file (it must not exist) with exactly `bits`, open for writing.
pub fn create_new(path: &Path, bits: u32) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(bits)
        .open(path)?;
    // The umask may have taken bits away.
    f.set_permissions(fs::Permissions::from_mode(bits))?;
    Ok(f)
}

/// Creates one directory with exactly `bits`. An existing one is an error
/// ([`io::ErrorKind::AlreadyExists`]), and is not touched.
pub fn create_dir(path: &Path, bits: u32) -> io::Result<()> {
    fs::DirBuilder::new().mode(bits).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(bits))
}

/// Creates `path` and its missing parents, each with exactly `bits`. Directories that
/// already exist are left as they are. The error does not name `path`: the caller does.
pub fn create_dir_all(path: &Path, bits: u32) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent, bits)?;
    }
    match create_dir(path, bits) {
        // Created meanwhile by someone else: theirs, left alone.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_follow_the_database() {
        let m = |b| FileMode::new(b).unwrap();
        assert_eq!((m(0o600).file(), m(0o600).dir()), (0o600, 0o700));
        assert_eq!((m(0o640).file(), m(0o640).dir()), (0o640, 0o750));
        assert_eq!((m(0o644).file(), m(0o644).dir()), (0o644, 0o755));
        assert_eq!((m(0o660).file(), m(0o660).dir()), (0o660, 0o770));
        // Execute bits of the database are not copied; the owner can always write.
        assert_eq!((m(0o755).file(), m(0o755).dir()), (0o644, 0o755));
        assert_eq!((m(0o400).file(), m(0o400).dir()), (0o600, 0o700));
        assert_eq!(FileMode::new(0o1000), None);
    }

    #[test]
    fn parses_octal_and_refuses_the_rest() {
        for s in ["0640", "640", "0o640", " 0640 "] {
            assert_eq!(FileMode::parse(s), Ok(FileMode(0o640)), "{s}");
        }
        for s in ["", "0o", "0648", "rw-r-----", "17777", "1777", "-1"] {
            let e = FileMode::parse(s).unwrap_err();
            assert!(e.contains("octal"), "{s}: {e}");
        }
        assert_eq!(FileMode(0o600).to_string(), "0600");
        let json = serde_json::to_string(&FileMode(0o640)).unwrap();
        assert_eq!(json, "\"0640\"");
        assert_eq!(
            serde_json::from_str::<FileMode>(&json).unwrap(),
            FileMode(0o640)
        );
    }

    #[test]
    fn created_entries_get_exact_bits_and_existing_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("existing");
        fs::create_dir(&existing).unwrap();
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o711)).unwrap();
        let deep = existing.join("a/b");
        create_dir_all(&deep, 0o750).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&existing), 0o711);
        assert_eq!(mode(&existing.join("a")), 0o750);
        assert_eq!(mode(&deep), 0o750);
        let f = deep.join("f");
        drop(create_new(&f, 0o640).unwrap());
        assert_eq!(mode(&f), 0o640);
        assert_eq!(
            create_new(&f, 0o640).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        set_path(&f, 0o600).unwrap();
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn a_file_in_the_way_is_not_named_twice() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let e = create_dir_all(&file, 0o750).unwrap_err();
        assert_eq!(e.to_string(), "exists and is not a directory");
    }
}
