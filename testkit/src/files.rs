//! Secret files for tests (tokens, private keys): written readable by the owner only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `contents` to `path` (creating or truncating it) and then sets its mode to 0600,
/// as converge demands of token and key files. Fails with the I/O error of either step;
/// after a failed chmod the file exists with the process's default mode.
pub fn write_private_file(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    std::fs::write(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_has_its_contents_and_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        write_private_file(&path, "secret").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "secret");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
