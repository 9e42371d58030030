//! The pid file (`--pid-file`): written once the master is ready, removed at exit.
//! A pid file that cannot be written is a startup error: [`check`] tries the
//! directory before anything is bound (control commands depend on the file).
//!
//! Written atomically and never through a symlink: the pid goes to a new file in
//! the same directory (`O_CREAT | O_EXCL | O_NOFOLLOW`, so nothing planted at that
//! name is followed or reused), mode 0644 whatever the umask, then `rename(2)`
//! puts it in place. A reader sees the old pid or the new one, never a partial
//! line; a symlink planted at the path is replaced, not written through.

use std::fs::{OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Whether `pid` could be written to `path` (the directory exists, is
/// writable, and has room): the temporary file [`write`] makes is made, written
/// and removed, and nothing at `path` is touched.
pub fn check(path: &Path, pid: u32) -> io::Result<()> {
    let temporary = temporary(path, pid)?;
    let written = write_new(&temporary, pid);
    let _ = std::fs::remove_file(&temporary);
    written
}

/// `.<name>.<pid>.tmp` beside `path`.
fn temporary(path: &Path, pid: u32) -> io::Result<std::path::PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut temporary = path.to_path_buf();
    temporary.set_file_name(format!(".{}.{pid}.tmp", name.to_string_lossy()));
    Ok(temporary)
}

/// A new file at `path` (never through a symlink), 0644, holding `pid`. One
/// already there is a temporary left by a master of the same pid that died
/// mid-write (pids repeat across boots): it is removed, and the write tried once more.
fn write_new(path: &Path, pid: u32) -> io::Result<()> {
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    let mut file = match create() {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            create()?
        }
        opened => opened?,
    };
    // The mode above is masked by the umask; the pid file is 0644 whatever it is.
    file.set_permissions(Permissions::from_mode(0o644))?;
    file.write_all(format!("{pid}\n").as_bytes())
}

/// Writes `pid` to `path`, atomically (see the module docs).
pub fn write(path: &Path, pid: u32) -> io::Result<()> {
    let temporary = temporary(path, pid)?;
    let written = write_new(&temporary, pid).and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Removes `path` if it still names `pid` (after an upgrade it names the new
/// master, which removes it in turn).
pub fn remove_if_ours(path: &Path, pid: u32) {
    let ours = std::fs::read_to_string(path).is_ok_and(|text| text.trim() == pid.to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlink_at_the_path_is_replaced_not_followed() {
        let dir = std::env::temp_dir().join(format!("prefork-pidfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.join("server.pid");
        symlink(&victim, &path).unwrap();
        write(&path, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file(), "a regular file now");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
        remove_if_ours(&path, 1);
        assert!(path.exists(), "another pid's file stays");
        remove_if_ours(&path, 4242);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_check_leaves_nothing_and_names_the_cause() {
        let dir = std::env::temp_dir().join(format!("prefork-pidfile-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        check(&dir.join("server.pid"), 4242).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left");
        // A temporary a master of the same pid left (it died mid-write).
        std::fs::write(dir.join(".server.pid.4242.tmp"), "stale").unwrap();
        check(&dir.join("server.pid"), 4242).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left");
        let missing = check(&dir.join("missing/server.pid"), 4242).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
