//! The cluster token: made by the head at its first start, kept in a file only its owner can
//! read, and carried by every RPC and REST call (`authorization: Bearer <token>`).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The variable a client or agent may take the token from instead of the file.
pub const TOKEN_ENV: &str = "STREAMRUN_TOKEN";

/// The token file in a head's directory.
pub fn token_path(dir: &Path) -> PathBuf {
    dir.join("token")
}

/// The head's token: read from `dir/token`, or made and written there (mode 0600) on the
/// first start.
pub fn load_or_create(dir: &Path) -> Result<String> {
    let path = token_path(dir);
    if path.exists() {
        return read(&path);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let token = crate::random_id(32);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    std::io::Write::write_all(&mut file, token.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(token)
}

/// Reads a token file.
pub fn read(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the cluster token {}", path.display()), e))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(Error::Config(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// The token a client uses: `STREAMRUN_TOKEN` when set, else the file at `path`.
pub fn for_client(path: &Path) -> Result<String> {
    match std::env::var(TOKEN_ENV) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        _ => read(path).map_err(|e| {
            Error::Config(format!(
                "{e}; give the head's token with {TOKEN_ENV} or --token-file"
            ))
        }),
    }
}

/// Whether an `authorization` header value carries `token`.
pub fn authorizes(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_readable_only_by_its_owner() {
        let dir = tempfile::tempdir().expect("dir");
        let first = load_or_create(dir.path()).expect("create");
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create(dir.path()).expect("read"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(token_path(dir.path()))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(authorizes(Some(&format!("Bearer {first}")), &first));
        assert!(!authorizes(Some("Bearer nope"), &first));
        assert!(!authorizes(None, &first));
    }
}
