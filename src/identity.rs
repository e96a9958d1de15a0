//! The node's data dir: its lock, the ed25519 identity key and the HTTP API token.
//!
//! Secrets are written with the tmp + fsync + rename + fsync-dir pattern and file mode 0600;
//! the temporary file has a random name and is created exclusively without following
//! symlinks, so nobody can plant a file or link there in advance. A secret file that others
//! can read is refused on load. [`lock_data_dir`] keeps two processes (two nodes, or a node
//! and `keygen`) from using one data dir at once.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use rand::RngCore;

/// File name of the identity key inside the data dir.
pub const KEY_FILE: &str = "identity.key";
/// File name of the API token inside the data dir.
pub const TOKEN_FILE: &str = "api-token";
/// Name of the lock file that keeps two processes from sharing one data dir.
pub const LOCK_FILE: &str = "lock";

/// Errors loading or creating a secret file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold a valid key.
    #[error(
        "{path} is not a valid identity key ({reason}); move it away to generate a new identity"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// The file can be read by other users.
    #[error("{path} has mode {mode:o}, readable by other users; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Another process holds the data dir.
    #[error(
        "data dir {0} is in use by another zerostate process; give each node its own --data-dir"
    )]
    InUse(PathBuf),
    /// `keygen` would overwrite an existing key.
    #[error(
        "{path} already exists; refusing to overwrite an identity (delete it first if you mean it)"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_owned();
    move |source| IdentityError::Io {
        action,
        path,
        source,
    }
}

/// Takes the data dir's lock; it is held until the returned file is dropped.
pub fn lock_data_dir(dir: &Path) -> Result<File, IdentityError> {
    ensure_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_err("cannot open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(IdentityError::InUse(dir.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(io_err("cannot lock", &path)(e)),
    }
}

/// Writes `bytes` to `path` atomically with mode 0600, creating parent directories (mode 0700).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    // A fresh name, created exclusively (never an existing file) and never through a link.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_err("cannot create", &tmp))?;
    let written = file
        .write_all(bytes)
        .map_err(io_err("cannot write", &tmp))
        .and_then(|()| file.sync_all().map_err(io_err("cannot sync", &tmp)));
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("cannot rename into", path)(e)
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync directory", dir))?;
    Ok(())
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn ensure_dir(dir: &Path) -> Result<(), IdentityError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("cannot create directory", dir))
}

/// Reads a secret file, refusing one that group or others can read.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot stat", path)(e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read(path)
        .map(Some)
        .map_err(io_err("cannot read", path))
}

/// Loads the identity key from `data_dir`, creating one on first start.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(KEY_FILE);
    match read_private(&path)? {
        Some(bytes) => decode_key(&path, &bytes),
        None => {
            let key = Keypair::generate_ed25519();
            write_key(&path, &key)?;
            Ok(key)
        }
    }
}

/// Loads an existing identity key; `None` if there is none yet.
pub fn load(data_dir: &Path) -> Result<Option<Keypair>, IdentityError> {
    let path = data_dir.join(KEY_FILE);
    read_private(&path)?
        .map(|bytes| decode_key(&path, &bytes))
        .transpose()
}

fn decode_key(path: &Path, bytes: &[u8]) -> Result<Keypair, IdentityError> {
    Keypair::from_protobuf_encoding(bytes).map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Creates a new identity key in `data_dir`; refuses to overwrite one.
pub fn generate(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(KEY_FILE);
    if path.exists() {
        return Err(IdentityError::Exists { path });
    }
    let key = Keypair::generate_ed25519();
    write_key(&path, &key)?;
    Ok(key)
}

fn write_key(path: &Path, key: &Keypair) -> Result<(), IdentityError> {
    let bytes = key
        .to_protobuf_encoding()
        .expect("ed25519 keys always encode");
    write_private(path, &bytes)
}

/// Returns the API token: `configured` if set, else the one in the data dir, generated
/// (32 random bytes, hex) on first start.
pub fn load_or_create_token(data_dir: &Path, configured: &str) -> Result<String, IdentityError> {
    if !configured.is_empty() {
        return Ok(configured.to_owned());
    }
    let path = data_dir.join(TOKEN_FILE);
    if let Some(bytes) = read_private(&path)? {
        let token = String::from_utf8_lossy(&bytes).trim().to_owned();
        if token.len() >= 16 {
            return Ok(token);
        }
    }
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = hex::encode(raw);
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_reused_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn corrupt_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join(KEY_FILE), b"garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a valid identity key"), "{err}");
    }

    #[test]
    fn keygen_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        assert!(matches!(
            generate(dir.path()),
            Err(IdentityError::Exists { .. })
        ));
    }

    #[test]
    fn writing_a_secret_never_follows_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        // Links at the names a predictable writer would use.
        for name in ["identity.tmp", ".identity.key.tmp", "api-token.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        let key = load_or_create(dir.path()).unwrap();
        load_or_create_token(dir.path(), "").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(load(dir.path()).unwrap().unwrap().public(), key.public());
        let meta = fs::symlink_metadata(dir.path().join(KEY_FILE)).unwrap();
        assert!(meta.file_type().is_file());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name().to_string_lossy().ends_with(".tmp")
                    && !e.file_type().unwrap().is_symlink()
            })
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left behind");
    }

    #[test]
    fn the_data_dir_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path()).unwrap();
        let err = lock_data_dir(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::InUse(_)), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(held);
        lock_data_dir(dir.path()).unwrap();
    }

    #[test]
    fn token_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_token(dir.path(), "").unwrap();
        let b = load_or_create_token(dir.path(), "").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let mode = fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_or_create_token(dir.path(), "configured-token-xyz").unwrap(),
            "configured-token-xyz"
        );
    }
}
